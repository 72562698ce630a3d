"""The service's request bodies: parsed and checked before any scoring (pure Python, no Ray).

``POST /classify`` takes ``{"text": "…"}`` or ``{"text": ["…", "…"]}``, optionally with ``"k"``;
``POST /distances`` the same with an optional ``"top"`` instead. A body that is not UTF-8, not
JSON, not such an object, or whose documents are empty, whitespace only or hold lone surrogates
(no UTF-8 encoding) is refused here with :class:`~nncd_ray.errors.InputError`: one line, which the
front end answers with HTTP 400. Documents longer than the model's context under
``--truncation error`` need the tokenizer, so the scorer replica refuses those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nncd_ray.data.corpus import Corpus
from nncd_ray.errors import InputError

# endpoint -> the optional integer field it takes besides "text"
ENDPOINT_OPTIONS: dict[str, str] = {"classify": "k", "distances": "top"}


@dataclass(frozen=True, kw_only=True)
class QueryRequest:
    """One checked request: its documents in order, and whether the body held a single text
    (answered with one object) or a list (answered with a list)."""

    endpoint: str
    texts: tuple[str, ...]
    single: bool
    # classify: neighbours that vote (None = the service's --k); distances: the nearest M
    # references only (None = every reference, in reference order)
    k: int | None = None
    top: int | None = None


def _decode(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"the request body is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    if not text.strip():
        raise InputError('the request body is empty; send JSON such as {"text": "..."}')
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"the request body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None


def _texts(value: Any, max_texts: int) -> tuple[tuple[str, ...], bool]:
    if isinstance(value, str):
        texts, single = [value], True
    elif isinstance(value, list):
        texts, single = value, False
        if not texts:
            raise InputError('"text" is an empty list; give at least one document')
        if len(texts) > max_texts:
            raise InputError(
                f'"text" holds {len(texts)} documents, more than this service takes in one '
                f"request ({max_texts}); split the list"
            )
    else:
        raise InputError(f'"text" must be a string or a list of strings, not {_kind(value)}')
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"document number {position} is {_kind(text)}, not a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(
                f"document number {position} is not valid UTF-8 ({exc.reason} at character "
                f"{exc.start})"
            ) from None
    # the batch path's rule for empty and whitespace-only documents, and its message
    Corpus.from_texts(texts, source="the request")
    return tuple(texts), single


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _count(body: dict[str, Any], name: str, n_refs: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n_refs:
        raise InputError(
            f'"{name}" must be an integer from 1 to {n_refs} (the references), not {value!r}'
        )
    return value


def parse_query(body: bytes, *, endpoint: str, max_texts: int, n_refs: int) -> QueryRequest:
    """The checked request of a ``POST /classify`` or ``POST /distances`` body; raises
    :class:`InputError` with a one-line reason for anything a scorer could not take."""
    option = ENDPOINT_OPTIONS[endpoint]
    parsed = _decode(body)
    if not isinstance(parsed, dict):
        raise InputError(
            f'the request body must be a JSON object such as {{"text": "..."}}, not {_kind(parsed)}'
        )
    unknown = sorted(set(parsed) - {"text", option})
    if unknown:
        raise InputError(
            f'unknown field {unknown[0]!r} in the request; /{endpoint} takes "text" and "{option}"'
        )
    if "text" not in parsed:
        raise InputError('the request has no "text" field')
    texts, single = _texts(parsed["text"], max_texts)
    count = _count(parsed, option, n_refs)
    return QueryRequest(
        endpoint=endpoint,
        texts=texts,
        single=single,
        k=count if option == "k" else None,
        top=count if option == "top" else None,
    )


__all__ = ["ENDPOINT_OPTIONS", "QueryRequest", "parse_query"]

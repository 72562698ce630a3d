"""Split arbitrary bytes into runs the tokenizer reproduces exactly and runs stored raw.

A language model codes text, but the codec must round-trip every byte string. The policy:

1. The input is cut into maximal valid-UTF-8 runs and maximal invalid-byte runs (Python's strict
   UTF-8 decoder decides validity; surrogate code points are invalid).
2. A valid run ``s`` becomes a *text* segment with tokens
   ``ids(s) = T(s, add_special_tokens=False)`` if the tokenizer reproduces it:
   ``decode(ids(s)) == s``. For valid UTF-8 input that a tokenizer reproduces (every byte-level BPE
   does) there is exactly one segment, so the token stream is the code-length contract's
   ``ids(x) + [e]`` (DESIGN.md §2).
3. A valid run that the tokenizer does not reproduce (normalising tokenizers, unknown-token
   vocabularies) is retried line by line (lines keep their ``\\n``); lines that still fail join the
   raw runs.
4. Raw runs (invalid bytes, and the lines of step 3) are stored verbatim: 8 bits per byte, what a
   uniform 256-way model would cost. The language model does not see them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nncd_ray.codec.container import KIND_RAW, KIND_TEXT

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Python's surrogateescape error handler maps each undecodable byte to U+DC80..U+DCFF
_ESCAPED = re.compile("[\udc80-\udcff]+")


@dataclass(frozen=True, kw_only=True)
class Segment:
    """One run of the input. ``token_ids`` is empty for raw runs."""

    kind: int  # KIND_TEXT or KIND_RAW
    data: bytes
    token_ids: tuple[int, ...] = ()


def utf8_runs(data: bytes) -> list[tuple[bool, bytes]]:
    """Maximal ``(is_valid_utf8, bytes)`` runs of ``data`` in order; they concatenate to it."""
    text = data.decode("utf-8", errors="surrogateescape")
    runs: list[tuple[bool, bytes]] = []
    position = 0
    for match in _ESCAPED.finditer(text):
        if match.start() > position:
            runs.append((True, text[position : match.start()].encode("utf-8")))
        runs.append((False, match.group().encode("utf-8", errors="surrogateescape")))
        position = match.end()
    if position < len(text):
        runs.append((True, text[position:].encode("utf-8")))
    return runs


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """``ids(text)`` of the code-length contract."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def detokenize(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """Exact inverse of :func:`tokenize` on the runs this module accepts as text."""
    return str(tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


def _text_or_none(tokenizer: PreTrainedTokenizerBase, text: str) -> Segment | None:
    ids = tokenize(tokenizer, text)
    if detokenize(tokenizer, ids) != text:
        return None
    return Segment(kind=KIND_TEXT, data=text.encode("utf-8"), token_ids=tuple(ids))


def _merge_raw(segments: list[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for seg in segments:
        if merged and seg.kind == KIND_RAW and merged[-1].kind == KIND_RAW:
            merged[-1] = Segment(kind=KIND_RAW, data=merged[-1].data + seg.data)
        else:
            merged.append(seg)
    return merged


def segment_bytes(data: bytes, tokenizer: PreTrainedTokenizerBase) -> list[Segment]:
    """Segments of ``data`` under the policy of this module; ``b""`` gives ``[]``."""
    segments: list[Segment] = []
    for valid, run in utf8_runs(data):
        if not valid:
            segments.append(Segment(kind=KIND_RAW, data=run))
            continue
        text = run.decode("utf-8")
        whole = _text_or_none(tokenizer, text)
        if whole is not None:
            segments.append(whole)
            continue
        for line in text.splitlines(keepends=True):
            segment = _text_or_none(tokenizer, line)
            segments.append(segment or Segment(kind=KIND_RAW, data=line.encode("utf-8")))
    return _merge_raw(segments)

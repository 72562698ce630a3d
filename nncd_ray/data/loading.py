"""Reading documents from files into a :class:`~nncd_ray.data.corpus.Corpus`.

Formats: JSON lines (``.jsonl``, ``.ndjson``, ``.json``; a ``.json`` file may also hold one JSON
array of objects), delimited text (``.csv``, ``.tsv``), Parquet (``.parquet``, via pyarrow) and
Hugging Face ``datasets`` (a directory written by ``save_to_disk``, or ``hf:NAME`` for
``load_dataset(NAME)``).

Fields are given by name, or for tabular formats by 1-based column number (``"2"``; a string such as
``"2,3"`` names several). Several text fields are joined with one space, as AG News's
``title + " " + description``. Every problem is an :class:`InputError` (or :class:`DatasetNotFound`)
that names the file and the line or row. Rows are counted from 0, like the default ids.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nncd_ray.data.corpus import Corpus, Label
from nncd_ray.data.tables import FieldSpec, Table, read_delimited, read_hf, read_parquet
from nncd_ray.errors import DatasetNotFound, InputError


class _DefaultField(str):
    """A field name nobody asked for: absent everywhere means "none" rather than an error."""

    __slots__ = ()


DEFAULT_TEXT_FIELDS: tuple[str, ...] = ("text",)
DEFAULT_LABEL_FIELD: str = _DefaultField("label")
DEFAULT_ID_FIELD: str = _DefaultField("id")
FORMATS: tuple[str, ...] = ("jsonl", "csv", "tsv", "parquet", "hf")

_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")


def split_fields(fields: str | Sequence[str]) -> tuple[str, ...]:
    """``"2,3"`` or ``["title", "body"]`` -> a tuple of names/numbers, blanks dropped."""
    items = [fields] if isinstance(fields, str) else list(fields)
    return tuple(part.strip() for item in items for part in str(item).split(",") if part.strip())


def infer_format(path: str | Path) -> str:
    """The format of a path: ``hf`` for ``hf:NAME`` and directories, otherwise from the suffix."""
    text = str(path)
    if text.startswith("hf:"):
        return "hf"
    candidate = Path(text)
    if candidate.is_dir():
        return "hf"
    fmt = _SUFFIXES.get(candidate.suffix.lower())
    if fmt is None:
        raise InputError(
            f"cannot tell the format of {text} from its suffix; pass a format "
            f"(--format {'|'.join(FORMATS)})"
        )
    return fmt


def decode_utf8(data: bytes, source: str) -> str:
    """Strict UTF-8 decoding (a leading BOM is dropped) with the place of the first bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputError(
            f"{source}: invalid UTF-8 at byte offset {exc.start} (line {line}, byte {column} of "
            f"that line: {exc.reason}); convert the file to UTF-8"
        ) from exc
    return text.removeprefix("\ufeff")


def read_text_file(path: Path) -> str:
    """The whole file as text; a missing or empty file is an error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DatasetNotFound(f"no such file: {path}") from exc
    except IsADirectoryError as exc:
        raise InputError(
            f"{path} is a directory; give a file, or a dataset saved by datasets"
        ) from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    if not data.strip():
        raise InputError(f"{path} is empty")
    return decode_utf8(data, str(path))


def _json_records(text: str, source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if text.lstrip().startswith("["):  # one JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        for number, item in enumerate(items):
            if not isinstance(item, dict):
                raise InputError(f"{source}: item {number} is not a JSON object")
            yield f"item {number}", item
        return
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source}: line {number} is not valid JSON: {exc.msg}") from exc
        if not isinstance(item, dict):
            raise InputError(f"{source}: line {number} is not a JSON object")
        yield f"line {number}", item


def read_jsonl(path: Path, fields: FieldSpec) -> Table:
    """JSON lines (or one array): every object is a document; fields are looked up by name."""
    source = str(path)
    records = list(_json_records(read_text_file(path), source))
    if not records:
        raise InputError(f"{source} holds no JSON objects")
    present = set().union(*(item.keys() for _, item in records))
    label = fields.label if fields.label in present or fields.label_required else None
    id_key = fields.id if fields.id in present or fields.id_required else None
    wanted: list[str | None] = [*fields.text, label, id_key]
    rows = [
        (where, [None if k is None else item.get(k) for k in wanted]) for where, item in records
    ]
    return Table(
        source=source,
        field_names=tuple("" if k is None else k for k in wanted),
        rows=rows,
        has_label=label is not None,
        has_id=id_key is not None,
    )


def _to_label(value: Any) -> Label:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return str(value)


def normalise_labels(values: Sequence[Any]) -> tuple[Label, ...]:
    """Ints where every label is an int (or an int's text), else strings."""
    labels = [_to_label(v) for v in values]
    if all(isinstance(v, int) or _INT_TEXT.fullmatch(v) for v in labels):
        return tuple(int(v) for v in labels)
    return tuple(str(v) for v in labels)


def _missing(value: Any) -> bool:
    return value is None or value == ""


def corpus_from_table(table: Table) -> Corpus:
    """Check every row and build the corpus: texts joined by a space, labels, ids."""
    n_text = len(table.field_names) - 2
    texts: list[str] = []
    labels: list[Any] = []
    ids: list[str] = []
    first_seen: dict[str, str] = {}
    for number, (where, values) in enumerate(table.rows):
        parts = values[:n_text]
        for name, part in zip(table.field_names[:n_text], parts, strict=True):
            if part is None:
                raise InputError(f"{table.source}: {where} has no text field {name!r}")
            if not isinstance(part, str):
                raise InputError(
                    f"{table.source}: {where}: text field {name!r} holds "
                    f"{type(part).__name__} {part!r}, not text"
                )
        if not any(parts):
            raise InputError(
                f"{table.source}: {where} has empty document text; remove the row or give it text"
            )
        texts.append(" ".join(parts))
        if table.has_label:
            label = values[n_text]
            if _missing(label):
                raise InputError(
                    f"{table.source}: {where} has no label {table.field_names[n_text]!r} "
                    "(other rows do); give every row a label, or read without labels"
                )
            labels.append(label)
        doc_id = str(number)
        if table.has_id:
            raw_id = values[n_text + 1]
            if _missing(raw_id):
                raise InputError(
                    f"{table.source}: {where} has no id {table.field_names[n_text + 1]!r}"
                )
            doc_id = str(_to_label(raw_id))
        if doc_id in first_seen:
            raise InputError(
                f"{table.source}: duplicate id {doc_id!r} at {first_seen[doc_id]} and {where}"
            )
        first_seen[doc_id] = where
        ids.append(doc_id)
    if not texts:
        raise InputError(f"{table.source} holds no documents")
    return Corpus(
        ids=tuple(ids),
        texts=tuple(texts),
        labels=normalise_labels(labels) if table.has_label else None,
        source=table.source,
    )


def load_corpus(
    path: str | Path,
    *,
    format: str | None = None,
    text_fields: str | Sequence[str] = DEFAULT_TEXT_FIELDS,
    label_field: str | None = DEFAULT_LABEL_FIELD,
    id_field: str | None = DEFAULT_ID_FIELD,
    header: bool | None = None,
    delimiter: str | None = None,
    split: str | None = None,
) -> Corpus:
    """Read documents, in file order, from ``path``.

    ``text_fields``: names or 1-based column numbers, joined with a space. ``label_field`` /
    ``id_field``: ``None`` for none; left at their defaults (``"label"``, ``"id"``) they are used
    when present and silently absent otherwise, while a field asked for explicitly must exist.
    Without ids the row numbers ``"0"``, ``"1"``, … are the ids. Labels are ints when every label is
    an integer, else strings. CSV: ``header`` True/False forces, ``None`` assumes a header when any
    field is given by name and otherwise guesses (a header row has text where a column is otherwise
    numeric); ``delimiter`` defaults to ``,`` (``\\t`` for ``.tsv``). ``split`` picks a Hugging Face
    split. Raises :class:`InputError` / :class:`DatasetNotFound` with the file and line or row.
    """
    if not str(path).startswith("hf:") and not Path(path).expanduser().exists():
        raise DatasetNotFound(f"no such file: {Path(path).expanduser()}")
    fmt = (format or infer_format(path)).lower()
    if fmt == "json":
        fmt = "jsonl"
    if fmt not in FORMATS:
        raise InputError(f"unknown input format {format!r}; choose one of: {', '.join(FORMATS)}")
    text = split_fields(text_fields)
    if not text:
        raise InputError("no text field given")
    fields = FieldSpec(
        text=text,
        label=label_field,
        label_required=label_field is not None and not isinstance(label_field, _DefaultField),
        id=id_field,
        id_required=id_field is not None and not isinstance(id_field, _DefaultField),
    )
    if fmt == "hf":
        table = read_hf(str(path), fields, split=split)
    else:
        file = Path(path).expanduser()
        if fmt == "jsonl":
            table = read_jsonl(file, fields)
        elif fmt == "parquet":
            table = read_parquet(file, fields)
        else:
            content = read_text_file(file)
            table = read_delimited(
                io.StringIO(content, newline=""),
                str(file),
                fields,
                header=header,
                delimiter=delimiter or ("\t" if fmt == "tsv" else ","),
            )
    return corpus_from_table(table)


__all__ = [
    "DEFAULT_ID_FIELD",
    "DEFAULT_LABEL_FIELD",
    "DEFAULT_TEXT_FIELDS",
    "FORMATS",
    "FieldSpec",
    "decode_utf8",
    "infer_format",
    "load_corpus",
    "normalise_labels",
    "split_fields",
]

"""Tabular readers behind :func:`nncd_ray.data.loading.load_corpus`: delimited text, Parquet,
HF datasets.

Each reader resolves the wanted fields (names, or 1-based column numbers) against the table's
columns and returns a :class:`Table`: one list of raw values per row, tagged with where the row came
from (``line 7`` for text files, ``row 6`` counted from 0 for columnar ones) so errors can say so.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nncd_ray.errors import DatasetNotFound, InputError

# rows looked at when guessing whether the first CSV row is a header
_HEADER_PROBE_ROWS = 50
# csv's default field limit (128 KiB) would refuse long documents
_CSV_FIELD_LIMIT = 2**31 - 1


@dataclass(frozen=True, kw_only=True)
class FieldSpec:
    """Which fields to read. ``None`` label/id: none wanted; ``*_required``: absent is an error."""

    text: tuple[str, ...]
    label: str | None
    label_required: bool
    id: str | None
    id_required: bool


@dataclass(frozen=True, kw_only=True)
class Table:
    """Raw rows: ``values`` = text fields…, then label, then id (``None`` where not read)."""

    source: str
    # names of the text fields, then of the label and id fields (for messages)
    field_names: tuple[str, ...]
    rows: Sequence[tuple[str, Sequence[Any]]]
    has_label: bool
    has_id: bool


def is_column_number(spec: str) -> bool:
    """``"3"`` is a 1-based column number; ``"text"`` (or ``"²"``) is a name."""
    return spec.isascii() and spec.isdigit() and int(spec) >= 1


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _looks_like_header(rows: Sequence[list[str]]) -> bool:
    """A first row with text in a column that is numeric in every following row is a header."""
    first, rest = rows[0], rows[1 : 1 + _HEADER_PROBE_ROWS]
    if not rest:
        return False
    for column, value in enumerate(first):
        below = [row[column] for row in rest if column < len(row)]
        if below and all(_is_number(v) for v in below) and not _is_number(value):
            return True
    return False


def _preview(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n[:30]) for n in names[:12])
    return shown + (", …" if len(names) > 12 else "")


def resolve_column(
    spec: str, names: Sequence[str] | None, source: str, *, required: bool
) -> int | None:
    """Index of a column given by name or 1-based number; ``None`` if optional and absent."""
    if names is not None and spec in names:
        if list(names).count(spec) > 1:
            raise InputError(f"{source}: column {spec!r} appears more than once in the header")
        return list(names).index(spec)
    if is_column_number(spec):
        index = int(spec) - 1
        if names is not None and index >= len(names):
            raise InputError(f"{source} has {len(names)} columns; there is no column {spec}")
        return index
    if not required:
        return None
    if names is None:
        raise InputError(
            f"{source}: column {spec!r} is given by name but the file is read without a header "
            "row; give 1-based column numbers (for example --text-columns 2,3) or --header"
        )
    raise InputError(
        f"{source} has no column {spec!r}; its columns are {_preview(names)}. Without a header "
        "row, give 1-based column numbers (for example --text-columns 2,3 --no-header)"
    )


def _resolve_all(
    fields: FieldSpec, names: Sequence[str] | None, source: str
) -> tuple[list[int], int | None, int | None]:
    text = [resolve_column(s, names, source, required=True) for s in fields.text]
    label = (
        resolve_column(fields.label, names, source, required=fields.label_required)
        if fields.label is not None
        else None
    )
    id_ = (
        resolve_column(fields.id, names, source, required=fields.id_required)
        if fields.id is not None
        else None
    )
    return [i for i in text if i is not None], label, id_


def _field_names(fields: FieldSpec, label: int | None, id_: int | None) -> tuple[str, ...]:
    return (
        *fields.text,
        fields.label if label is not None and fields.label else "",
        fields.id if id_ is not None and fields.id else "",
    )


def read_delimited(
    handle: IO[str], source: str, fields: FieldSpec, *, header: bool | None, delimiter: str
) -> Table:
    """CSV/TSV (quoted fields, ``""`` for a quote, backslashes kept as they are)."""
    records: list[tuple[int, list[str]]] = []
    previous_limit = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        reader = csv.reader(handle, delimiter=delimiter)
        last_line = 0
        try:
            for row in reader:
                start, last_line = last_line + 1, reader.line_num
                if row:  # a blank line is no record
                    records.append((start, row))
        except csv.Error as exc:
            raise InputError(f"{source}: line {reader.line_num}: malformed CSV: {exc}") from exc
    finally:
        csv.field_size_limit(previous_limit)
    if not records:
        raise InputError(f"{source} holds no rows")
    named = [s for s in fields.text if not is_column_number(s)]
    named += [
        s
        for s, req in ((fields.label, fields.label_required), (fields.id, fields.id_required))
        if s is not None and req and not is_column_number(s)
    ]
    if header is None:
        header = bool(named) or _looks_like_header([row for _, row in records])
    names: list[str] | None = None
    if header:
        names = records[0][1]
        records = records[1:]
        if not records:
            raise InputError(f"{source} has a header row and no data rows")
    text, label, id_ = _resolve_all(fields, names, source)
    wanted: list[int | None] = [*text, label, id_]
    rows: list[tuple[str, list[Any]]] = []
    for line, row in records:
        values: list[Any] = []
        for spec_index, column in enumerate(wanted):
            if column is not None and column >= len(row):
                name = _field_names(fields, label, id_)[spec_index] or str(column + 1)
                raise InputError(
                    f"{source}: line {line} has {len(row)} columns; column {column + 1} "
                    f"({name!r}) is missing"
                )
            values.append(None if column is None else row[column])
        rows.append((f"line {line}", values))
    return Table(
        source=source,
        field_names=_field_names(fields, label, id_),
        rows=rows,
        has_label=label is not None,
        has_id=id_ is not None,
    )


def _columnar_table(
    source: str, names: Sequence[str], fields: FieldSpec, column: Callable[[str], list[Any]]
) -> Table:
    """Rows from a columnar source; ``column(name) -> list`` reads one column."""
    text, label, id_ = _resolve_all(fields, names, source)
    wanted: list[int | None] = [*text, label, id_]
    data: dict[int, list[Any]] = {}
    for index in {i for i in wanted if i is not None}:
        data[index] = column(names[index])
    length = len(next(iter(data.values()))) if data else 0
    rows = [
        (f"row {n}", [None if i is None else data[i][n] for i in wanted]) for n in range(length)
    ]
    if not rows:
        raise InputError(f"{source} holds no rows")
    return Table(
        source=source,
        field_names=_field_names(fields, label, id_),
        rows=rows,
        has_label=label is not None,
        has_id=id_ is not None,
    )


def read_parquet(path: Path, fields: FieldSpec) -> Table:
    """A Parquet file (pyarrow); columns by name or 1-based number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(path)
    try:
        parquet = pq.ParquetFile(path)
        names = list(parquet.schema_arrow.names)
        table = parquet.read()
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{source} is not a readable Parquet file: {exc}") from exc

    def column(name: str) -> list[Any]:
        try:
            return list(table.column(name).to_pylist())
        except (pa.ArrowException, UnicodeDecodeError) as exc:
            raise InputError(f"{source}: column {name!r} cannot be read: {exc}") from exc

    return _columnar_table(source, names, fields, column)


def read_hf(spec: str, fields: FieldSpec, *, split: str | None) -> Table:
    """``hf:NAME`` via ``datasets.load_dataset``, or a ``save_to_disk`` directory."""
    import datasets

    if spec.startswith("hf:"):
        name = spec[3:]
        try:
            loaded = datasets.load_dataset(name, split=split)
        except FileNotFoundError as exc:
            raise DatasetNotFound(f"Hugging Face dataset {name!r} not found: {exc}") from exc
        except (OSError, ValueError, ConnectionError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"cannot load Hugging Face dataset {name!r}: {first}") from exc
    else:
        directory = Path(spec).expanduser()
        if not directory.exists():
            raise DatasetNotFound(f"no such dataset directory: {directory}")
        try:
            loaded = datasets.load_from_disk(str(directory))
        except FileNotFoundError as exc:
            raise InputError(
                f"{directory} is a directory but not a dataset saved with save_to_disk"
            ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        splits = sorted(loaded.keys())
        if split is None and len(splits) == 1:
            split = splits[0]
        if split is None or split not in loaded:
            raise InputError(
                f"{spec} has splits {', '.join(splits)}; choose one (split=..., --split)"
            )
        loaded = loaded[split]
    elif split is not None and not spec.startswith("hf:"):
        raise InputError(f"{spec} holds a single dataset without splits; drop the split")
    if not isinstance(loaded, datasets.Dataset):
        raise InputError(f"{spec} is a {type(loaded).__name__}, not a dataset that can be indexed")
    dataset = loaded
    source = spec if split is None else f"{spec}[{split}]"
    return _columnar_table(
        source, list(dataset.column_names), fields, lambda name: list(dataset[name])
    )

"""How much of each document its code length covers, read from a store.

A compressor that truncates (an LM cuts a document longer than its context) gives a code length
for the kept part only. The store records, per document, the UTF-8 bytes scored
(``row_scored_bytes`` / ``col_scored_bytes``) beside its full bytes (``row_bytes`` /
``col_bytes``); a document is *truncated* when the first is below the second. Bits per byte
divides by the scored bytes, and every report says how many documents were truncated: the NCD of a
truncated document compares only its beginning.

Stores written before the scored bytes were recorded have no such arrays: their count is
``recorded=False`` and bits per byte falls back to the full bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.matrix.store.chunks import read_cells

if TYPE_CHECKING:
    import zarr

    from nncd_ray.matrix.store.matrix_store import MatrixStore


@dataclass(frozen=True, kw_only=True)
class TruncationCount:
    """Truncation over the distinct documents of a store (rows and columns of a rectangular store,
    the one set of a square store), counting only documents some tile has scored."""

    # whether the store records scored bytes at all
    recorded: bool
    # documents scored so far, and of those the ones whose code length covers only a part
    documents_scored: int
    documents: int
    # UTF-8 bytes of the scored documents, and the bytes their code lengths cover
    bytes_total: int
    bytes_scored: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def warning(self) -> str:
        """One line for stderr and reports (meaningful when ``documents`` > 0)."""
        share = 100.0 * self.bytes_scored / self.bytes_total if self.bytes_total else 100.0
        return (
            f"{self.documents} of {self.documents_scored} documents were truncated by the "
            f"compressor: their code lengths cover {self.bytes_scored:,} of {self.bytes_total:,} "
            f"bytes ({share:.1f}%); bits per byte counts only the scored bytes, and the NCD of a "
            "truncated document compares only its beginning"
        )


def count_from_arrays(full: NDArray[np.int64], scored: NDArray[np.int64] | None) -> TruncationCount:
    """Count over documents with ``full`` UTF-8 bytes and ``scored`` bytes covered (``-1``: not
    scored yet; ``None``: not recorded, every document counts as whole)."""
    full = np.asarray(full, dtype=np.int64)
    if scored is None:
        return TruncationCount(
            recorded=False,
            documents_scored=int(full.size),
            documents=0,
            bytes_total=int(full.sum()),
            bytes_scored=int(full.sum()),
        )
    scored = np.asarray(scored, dtype=np.int64)
    known = scored >= 0
    return TruncationCount(
        recorded=True,
        documents_scored=int(known.sum()),
        documents=int((known & (scored < full)).sum()),
        bytes_total=int(full[known].sum()),
        bytes_scored=int(scored[known].sum()),
    )


def _read_ints(group: zarr.Group, name: str) -> NDArray[np.int64]:
    node = group[name]
    return np.asarray(read_cells(node, (slice(None),)), dtype=np.int64)  # type: ignore[arg-type]


def group_bytes(group: zarr.Group, side: str) -> tuple[NDArray[np.int64], NDArray[np.int64] | None]:
    """``(full bytes, scored bytes or None)`` of one side (``"row"``/``"col"``) of a store group;
    a chunk that fails to decode raises :class:`~nncd_ray.matrix.store.chunks.UndecodableChunk`.
    """
    full = _read_ints(group, f"{side}_bytes")
    name = f"{side}_scored_bytes"
    return full, (_read_ints(group, name) if name in group else None)


def count_sides(
    sides: dict[str, tuple[NDArray[np.int64], NDArray[np.int64] | None]], *, square: bool
) -> TruncationCount:
    """:class:`TruncationCount` of the distinct documents from ``{"row": (full, scored), "col":
    …}`` as :func:`group_bytes` gives them (only the rows of a square store)."""
    full, scored = sides["row"]
    if not square:
        col_full, col_scored = sides["col"]
        full = np.concatenate([full, col_full])
        scored = (
            None if scored is None or col_scored is None else np.concatenate([scored, col_scored])
        )
    return count_from_arrays(full, scored)


def count_group(group: zarr.Group, *, square: bool) -> TruncationCount:
    """:class:`TruncationCount` of the distinct documents of a store group."""
    return count_sides({side: group_bytes(group, side) for side in ("row", "col")}, square=square)


def count_truncated(store: MatrixStore) -> TruncationCount:
    """:class:`TruncationCount` of a :class:`~nncd_ray.matrix.store.matrix_store.MatrixStore`."""
    return count_group(store.group, square=store.square)

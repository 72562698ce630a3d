"""Reading chunks of a store and naming what is wrong with them.

A chunk that zarr cannot decode (checksum mismatch, codec error, wrong size) raises
:class:`UndecodableChunk`; a code length must be a finite, non-negative number of bits; a tile
marked done whose data fails either check is a :class:`TileProblem`, and readers turn one into a
one-line :class:`~nncd_ray.errors.CorruptTile` naming the tile, its cells and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import CorruptTile, NNCDError
from nncd_ray.matrix.tiling import TilePlan

if TYPE_CHECKING:
    import zarr


class UndecodableChunk(Exception):
    """A chunk that zarr could not decode (checksum mismatch, codec error, wrong size). Internal:
    callers turn it into a :class:`TileProblem` or a :class:`CorruptTile`."""


def is_decode_error(exc: BaseException) -> bool:
    """Whether ``exc``, raised while reading a chunk, means the chunk's bytes are bad (and not that
    the storage could not be reached, which stays an ``OSError``).

    zarr raises ``ValueError`` for a crc32c mismatch or a chunk of the wrong size and numcodecs
    ``RuntimeError`` for a zstd frame it cannot decompress.
    """
    return isinstance(exc, ValueError | RuntimeError | TypeError | EOFError) and not isinstance(
        exc, NNCDError | OSError
    )


def decode_reason(exc: BaseException) -> str:
    """``fails its checksum`` or ``fails to decode (RuntimeError: Zstd decompression error …)``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "checksum" in text.lower():
        return "fails its checksum (the chunk was altered after it was written)"
    return f"fails to decode ({type(exc).__name__}: {text[:120]})"


def read_cells(array: zarr.Array, selection: tuple[slice, ...]) -> NDArray[Any]:
    """``array[selection]``; a chunk that cannot be decoded raises :class:`UndecodableChunk`."""
    try:
        return np.asarray(array[selection])
    except Exception as exc:
        if is_decode_error(exc):
            raise UndecodableChunk(decode_reason(exc)) from exc
        raise


def code_length_problem(values: NDArray[Any]) -> str | None:
    """``None`` when every value is a finite, non-negative number of bits; otherwise what is wrong,
    e.g. ``holds 64 impossible code lengths, the first NaN (what a missing chunk reads as)``."""
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(values) & (values >= 0))
    if not bad.any():
        return None
    first = float(np.asarray(values).ravel()[int(np.flatnonzero(bad.ravel())[0])])
    if np.isnan(first):
        kind = "NaN (what a missing chunk reads as)"
    elif np.isinf(first):
        kind = "infinite"
    else:
        kind = f"negative ({first:.3g} bits)"
    count = int(bad.sum())
    return f"holds {count} impossible code length{'s' if count > 1 else ''}, the first {kind}"


def scored_bytes_problem(scored: NDArray[np.int64], full: NDArray[np.int64] | None) -> str | None:
    """``None`` when each scored-bytes entry lies in ``[0, full bytes]``; otherwise what is wrong
    (``-1`` is the fill value: never written)."""
    if (scored < 0).any():
        return "has documents whose scored bytes were never written"
    if full is not None and (scored > full).any():
        return "says more bytes were scored than the documents have"
    return None


@dataclass(frozen=True, kw_only=True)
class TileProblem:
    """One tile marked done whose data is bad. Cell ranges are half-open ``[start, stop)``."""

    index_row: int
    index_col: int
    row_start: int
    row_stop: int
    col_start: int
    col_stop: int
    # the array and what is wrong with the tile's part of it
    array: str
    reason: str

    @property
    def key(self) -> str:
        return f"{self.index_row},{self.index_col}"

    def where(self) -> str:
        """``tile (1, 0) (rows 64-127, columns 0-63)``: inclusive ranges, as people count."""
        return (
            f"tile ({self.index_row}, {self.index_col}) (rows {self.row_start}-"
            f"{self.row_stop - 1}, columns {self.col_start}-{self.col_stop - 1})"
        )

    def describe(self) -> str:
        return f"{self.where()}: {self.array} {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tile": [self.index_row, self.index_col],
            "rows": [self.row_start, self.row_stop],
            "cols": [self.col_start, self.col_stop],
            "array": self.array,
            "reason": self.reason,
        }


def tile_problem(
    plan: TilePlan, index_row: int, index_col: int, array: str, reason: str
) -> TileProblem:
    tile = plan.tile_at(index_row, index_col)
    return TileProblem(
        index_row=index_row,
        index_col=index_col,
        row_start=tile.row_start,
        row_stop=tile.row_stop,
        col_start=tile.col_start,
        col_stop=tile.col_stop,
        array=array,
        reason=reason,
    )


def fix_hint(url: str) -> str:
    return (
        f"run `nncd status --store {url} --verify` to list every bad tile, then run the same "
        "`nncd matrix` command again to recompute them"
    )


def corrupt_tile_error(url: str, problem: TileProblem) -> CorruptTile:
    """The one-line error a reader raises for a bad tile: the tile, its cells, what, the fix."""
    return CorruptTile(f"store {url}: {problem.describe()}; {fix_hint(url)}")


def corrupt_array_error(url: str, array: str, reason: str) -> CorruptTile:
    """The one-line error for a document array (ids, labels, bytes) that cannot be read."""
    return CorruptTile(
        f"store {url}: {array} {reason}; run the same `nncd matrix` command again to rewrite it "
        "from the documents (`nncd status --store URL --verify` lists every problem)"
    )


def read_chunkwise(
    array: zarr.Array, rows: slice, cols: slice, *, url: str = "the store"
) -> NDArray[np.float32]:
    """``array[rows, cols]`` as float32, read one chunk at a time into one preallocated block.

    zarr would otherwise fetch and decode every chunk of the selection concurrently, holding them
    all (for a row block of a wide matrix: a whole band of tiles) on top of the result. A chunk
    that fails to decode raises :class:`~nncd_ray.errors.CorruptTile` naming its tile.
    """
    row_start, row_stop, _ = rows.indices(int(array.shape[0]))
    col_start, col_stop, _ = cols.indices(int(array.shape[1]))
    chunk_rows, chunk_cols = (int(c) for c in array.chunks)
    out = np.empty((row_stop - row_start, col_stop - col_start), dtype=np.float32)
    r = row_start
    while r < row_stop:
        r_next = min(row_stop, (r // chunk_rows + 1) * chunk_rows)
        c = col_start
        while c < col_stop:
            c_next = min(col_stop, (c // chunk_cols + 1) * chunk_cols)
            try:
                part = read_cells(array, (slice(r, r_next), slice(c, c_next)))
            except UndecodableChunk as exc:
                plan = TilePlan(
                    n_rows=int(array.shape[0]), n_cols=int(array.shape[1]), tile=chunk_rows
                )
                problem = tile_problem(
                    plan, r // chunk_rows, c // chunk_cols, array.basename, str(exc)
                )
                raise corrupt_tile_error(url, problem) from exc
            out[r - row_start : r_next - row_start, c - col_start : c_next - col_start] = part
            c = c_next
        r = r_next
    return out

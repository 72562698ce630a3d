"""Integrity of a matrix store: which tiles marked done hold data that can be trusted.

Two layers:

- **Checksums.** Every array of a store written by this version has a ``crc32c`` codec after its
  compressor (zarr v3), so a flipped bit or a truncated chunk fails to decode instead of reading
  back as a wrong number. Stores written before keep their codecs and get the value checks only.
- **Values.** A code length is a number of bits: finite and not negative. In a tile marked done,
  NaN (what a missing chunk reads as), infinity or a negative value means the tile is bad; so does
  a scored-bytes entry that is negative (never written) or larger than its document.

:func:`verify_store` reads every done tile and lists the bad ones (``nncd status --verify``; the
matrix engine runs it when it resumes a store and recomputes them). Readers (``nncd knn``, the
classifier, ``nncd study``) check what they read and raise :class:`~nncd_ray.errors.CorruptTile`,
one line naming the tile and the fix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import CorruptTile, NNCDError

if TYPE_CHECKING:
    import zarr

    from nncd_ray.matrix.store.matrix_store import MatrixStore
    from nncd_ray.matrix.tiling import TilePlan

# a band of tiles (tile rows × all columns, float32) up to this size is read in one request, so
# that remote stores fetch its chunks concurrently; larger bands are read tile by tile
VERIFY_BAND_BYTES = 128 << 20
# the arrays that hold one value per (row, column) cell, chunk = one tile
PAIR_ARRAYS = ("pair_bits", "pair_bits_reversed")
# one value per document, chunk = one tile band, rewritten by every tile of the band
PER_DOCUMENT_ARRAYS = ("row_bits", "col_bits", "row_scored_bytes", "col_scored_bytes")
# arrays written once when the store is created, from the documents
DOCUMENT_ARRAYS = ("row_ids", "col_ids", "row_labels", "col_labels", "row_bytes", "col_bytes")


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


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    """What :func:`verify_store` found."""

    store: str
    tiles_total: int
    tiles_checked: int
    # one entry per problem; a tile can have more than one (its pair chunk and its row_bits)
    problems: tuple[TileProblem, ...]
    # document arrays (ids, labels, bytes) that cannot be read: array -> reason
    array_problems: dict[str, str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems and not self.array_problems

    def bad_tiles(self) -> list[tuple[int, int]]:
        """``(tile row, tile column)`` of every bad tile, sorted, each once."""
        return sorted({(p.index_row, p.index_col) for p in self.problems})

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tiles_total": self.tiles_total,
            "tiles_checked": self.tiles_checked,
            "tiles_bad": len(self.bad_tiles()),
            "bad_tiles": [p.to_dict() for p in self.problems],
            "bad_arrays": dict(self.array_problems),
            "seconds": self.seconds,
        }


def _bands(n: int, tile: int) -> Iterator[tuple[int, slice]]:
    for band, start in enumerate(range(0, n, tile)):
        yield band, slice(start, min(start + tile, n))


class _Verifier:
    """Collects the problems of one store (see :func:`verify_store`)."""

    def __init__(self, store: MatrixStore, mask: NDArray[np.bool_], band_bytes: int) -> None:
        self.store = store
        self.plan = store.plan
        self.mask = mask
        self.band_bytes = band_bytes
        self.problems: list[TileProblem] = []
        self.array_problems: dict[str, str] = {}

    def add(self, index_row: int, index_col: int, array: str, reason: str) -> None:
        self.problems.append(tile_problem(self.plan, index_row, index_col, array, reason))

    def markers(self) -> None:
        """Each done tile's completion marker must decode (its presence alone says done)."""
        array = self.store.array("tiles_done")
        try:
            read_cells(array, (slice(None), slice(None)))
            return
        except UndecodableChunk:
            pass
        for r, c in zip(*self.mask.nonzero(), strict=True):
            try:
                read_cells(array, (slice(int(r), int(r) + 1), slice(int(c), int(c) + 1)))
            except UndecodableChunk as exc:
                self.add(int(r), int(c), "completion marker (tiles_done)", str(exc))

    def pairs(self, name: str) -> None:
        array = self.store.array(name)
        tile, n_cols = self.plan.tile, self.plan.n_cols
        for band, rows in _bands(self.plan.n_rows, tile):
            done = np.flatnonzero(self.mask[band])
            if not done.size:
                continue
            block: NDArray[Any] | None = None
            if (rows.stop - rows.start) * n_cols * 4 <= self.band_bytes:
                try:  # one request for the whole band: chunks fetched concurrently
                    block = read_cells(array, (rows, slice(0, n_cols)))
                except UndecodableChunk:
                    block = None  # find the bad chunks one by one below
            for c in (int(c) for c in done):
                cols = slice(c * tile, min((c + 1) * tile, n_cols))
                try:
                    values = read_cells(array, (rows, cols)) if block is None else block[:, cols]
                except UndecodableChunk as exc:
                    self.add(band, c, name, str(exc))
                    continue
                reason = code_length_problem(values)
                if reason is not None:
                    self.add(band, c, name, reason)

    def vector(
        self, name: str, axis: int, check: Callable[[NDArray[Any], slice], str | None]
    ) -> None:
        """One value per document (``row_bits``, ``col_scored_bytes`` …), chunk = one tile. A bad
        chunk is blamed on the first done tile of its band: recomputing any tile of the band
        rewrites the whole chunk."""
        array = self.store.array(name)
        n = self.plan.n_rows if axis == 0 else self.plan.n_cols
        try:
            whole: NDArray[Any] | None = read_cells(array, (slice(0, n),))
        except UndecodableChunk:
            whole = None
        for band, part in _bands(n, self.plan.tile):
            done = np.flatnonzero(self.mask[band] if axis == 0 else self.mask[:, band])
            if not done.size:
                continue
            first = int(done[0])
            where = (band, first) if axis == 0 else (first, band)
            try:
                values = whole[part] if whole is not None else read_cells(array, (part,))
            except UndecodableChunk as exc:
                self.add(*where, name, str(exc))
                continue
            reason = check(values, part)
            if reason is not None:
                self.add(*where, name, reason)

    def documents(self) -> dict[str, NDArray[Any]]:
        """Read the document arrays; record those that fail. Returns the ones that decode."""
        read: dict[str, NDArray[Any]] = {}
        for name in DOCUMENT_ARRAYS:
            if name not in self.store.group:
                continue
            try:
                read[name] = read_cells(self.store.array(name), (slice(None),))
            except UndecodableChunk as exc:
                self.array_problems[name] = str(exc)
        for side in ("row", "col"):
            sizes = read.get(f"{side}_bytes")
            if sizes is not None and (np.asarray(sizes) < 1).any():
                self.array_problems[f"{side}_bytes"] = "has documents of fewer than 1 byte"
        return read


def verify_store(
    store: MatrixStore,
    *,
    mask: NDArray[np.bool_] | None = None,
    band_bytes: int = VERIFY_BAND_BYTES,
) -> VerifyReport:
    """Read every done tile of ``store`` (all its arrays) and return the bad ones.

    ``mask`` is the ``(tiles along rows, tiles along columns)`` done mask (read from the store's
    markers when ``None``). Storage errors (network, permissions) are raised, not reported as bad
    tiles: only bytes that were read and found wrong make a tile bad.
    """
    started = time.perf_counter()
    done = store.done_mask() if mask is None else mask
    verifier = _Verifier(store, done, band_bytes)
    if done.any():
        verifier.markers()
        for name in PAIR_ARRAYS:
            if name in store.group:
                verifier.pairs(name)
    documents = verifier.documents()
    if done.any():
        for side, axis in (("row", 0), ("col", 1)):
            verifier.vector(f"{side}_bits", axis, lambda values, _: code_length_problem(values))
            full = documents.get(f"{side}_bytes")
            if f"{side}_scored_bytes" in store.group:

                def scored(values: NDArray[Any], part: slice, full: Any = full) -> str | None:
                    limit = None if full is None else np.asarray(full[part], dtype=np.int64)
                    return scored_bytes_problem(np.asarray(values, dtype=np.int64), limit)

                verifier.vector(f"{side}_scored_bytes", axis, scored)
    return VerifyReport(
        store=store.url,
        tiles_total=store.plan.n_tiles,
        tiles_checked=int(done.sum()),
        problems=tuple(
            sorted(verifier.problems, key=lambda p: (p.index_row, p.index_col, p.array))
        ),
        array_problems=verifier.array_problems,
        seconds=time.perf_counter() - started,
    )

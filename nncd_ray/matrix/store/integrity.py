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
classifier, ``nncd study``, through :class:`~nncd_ray.matrix.store.reader.StoreReader`) check what
they read and raise :class:`~nncd_ray.errors.CorruptTile`, one line naming the tile and the fix
(:mod:`nncd_ray.matrix.store.chunks`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.matrix.store.chunks import (
    TileProblem,
    UndecodableChunk,
    code_length_problem,
    read_cells,
    scored_bytes_problem,
    tile_problem,
)
from nncd_ray.matrix.store.layout import DOCUMENT_ARRAYS, PAIR_ARRAYS
from nncd_ray.matrix.store.sparse import CANDIDATES, candidates_problem, column_band_owner

if TYPE_CHECKING:
    from nncd_ray.matrix.store.matrix_store import MatrixStore

# a band of tiles (tile rows × all columns, float32) up to this size is read in one request, so
# that remote stores fetch its chunks concurrently; larger bands are read tile by tile
VERIFY_BAND_BYTES = 128 << 20


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
        self, name: str, check: Callable[[NDArray[Any], slice], str | None], *, axis: int
    ) -> None:
        """One value per document (``row_bits``, ``col_scored_bytes`` …), chunk = one tile. A bad
        chunk is blamed on the first done tile of its band: recomputing any tile of the band
        rewrites the whole chunk."""
        n = self.plan.n_rows if axis == 0 else self.plan.n_cols
        owners: list[tuple[slice, tuple[int, int]]] = []
        for band, part in _bands(n, self.plan.tile):
            done = np.flatnonzero(self.mask[band] if axis == 0 else self.mask[:, band])
            if done.size:
                first = int(done[0])
                owners.append((part, (band, first) if axis == 0 else (first, band)))
        self._check_bands(name, n, owners, check)

    def owned_vector(self, name: str, check: Callable[[NDArray[Any], slice], str | None]) -> None:
        """A sparse store's ``col_bits`` / ``col_scored_bytes``: one value per reference, each
        column band written by its owner tile (:func:`column_band_owner`), which a bad chunk
        is blamed on."""
        n = self.store.n_refs
        owners = []
        for band, part in _bands(n, self.plan.tile):
            owner = column_band_owner(self.plan.grid, band)
            if self.mask[owner]:
                owners.append((part, owner))
        self._check_bands(name, n, owners, check)

    def _check_bands(
        self,
        name: str,
        n: int,
        owners: list[tuple[slice, tuple[int, int]]],
        check: Callable[[NDArray[Any], slice], str | None],
    ) -> None:
        """Check the bands ``part`` of vector ``name`` (length ``n``), each blamed on its tile
        ``(row, col)``: read whole when it decodes, else band by band."""
        array = self.store.array(name)
        try:
            whole: NDArray[Any] | None = read_cells(array, (slice(0, n),))
        except UndecodableChunk:
            whole = None
        for part, (row, col) in owners:
            try:
                values = whole[part] if whole is not None else read_cells(array, (part,))
            except UndecodableChunk as exc:
                self.add(row, col, name, str(exc))
                continue
            reason = check(values, part)
            if reason is not None:
                self.add(row, col, name, reason)

    def candidates(self) -> None:
        """A sparse store's ``candidates`` chunk of each done tile: decodes, and names distinct
        references that exist."""
        array = self.store.array(CANDIDATES)
        for r, c in zip(*self.mask.nonzero(), strict=True):
            box = self.plan.tile_at(int(r), int(c))
            try:
                values = read_cells(
                    array, (slice(box.row_start, box.row_stop), slice(box.col_start, box.col_stop))
                )
            except UndecodableChunk as exc:
                self.add(int(r), int(c), CANDIDATES, str(exc))
                continue
            reason = candidates_problem(np.asarray(values), self.store.n_refs)
            if reason is not None:
                self.add(int(r), int(c), CANDIDATES, reason)

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
        if store.sparse:
            verifier.candidates()
        for side, axis in (("row", 0), ("col", 1)):
            # a sparse store's references are not its columns (candidate slots): owners write them
            vector = (
                verifier.owned_vector
                if store.sparse and side == "col"
                else partial(verifier.vector, axis=axis)
            )
            vector(f"{side}_bits", lambda values, _: code_length_problem(values))
            full = documents.get(f"{side}_bytes")
            if f"{side}_scored_bytes" in store.group:

                def scored(values: NDArray[Any], part: slice, full: Any = full) -> str | None:
                    limit = None if full is None else np.asarray(full[part], dtype=np.int64)
                    return scored_bytes_problem(np.asarray(values, dtype=np.int64), limit)

                vector(f"{side}_scored_bytes", scored)
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

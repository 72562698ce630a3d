"""Reading a store back with every value checked: the one reader of the k-NN stage, the classifier
and the study's plots.

:class:`StoreReader` reads from a :class:`~nncd_ray.matrix.store.matrix_store.MatrixStore` (so
there is one way to open a store, local or remote): the completion markers and C(x) of every
document up front, then the pair arrays band by band or block by block, one chunk at a time, so
memory is bounded by the block and never by the whole matrix. Everything read is checked: a chunk
that fails to decode (checksum, codec) or a done tile holding NaN, infinite or negative code
lengths raises :class:`~nncd_ray.errors.CorruptTile`, one line naming the tile, its cells and the
fix. Only done tiles are ever read as data: callers ask for rows whose tiles are all done.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import CorruptTile, StoreError
from nncd_ray.matrix.store.chunks import (
    UndecodableChunk,
    code_length_problem,
    corrupt_array_error,
    corrupt_tile_error,
    fix_hint,
    read_cells,
    read_chunkwise,
    tile_problem,
)
from nncd_ray.matrix.store.sparse import column_band_owner, column_bands_written
from nncd_ray.matrix.store.truncation import group_bytes

if TYPE_CHECKING:
    import zarr

    from nncd_ray.matrix.store.matrix_store import MatrixStore

# a block smaller than a tile would decode each chunk once per block; up to this size the whole
# band of tiles (tile rows × all columns, float32) is read once and kept while its blocks are done
BAND_BYTES = 128 << 20


class StoreReader:
    """The done part of one store, read and checked (see the module docstring).

    ``tiles_done``: ``(tiles along rows, tiles along columns) bool``; ``row_bits`` / ``col_bits``:
    ``(n_rows,)`` / ``(n_cols,)`` float64 C(x) in bits, NaN where no done tile wrote them.
    """

    def __init__(self, store: MatrixStore) -> None:
        self.store = store
        self.url = store.url
        self.plan = store.plan
        self.tile = store.tile
        self.square = store.square
        self.n_rows, self.n_cols = store.plan.shape
        self.tiles_done = self._read_markers()
        self.row_bits = self._read_document_bits("row")
        self.col_bits = self._read_document_bits("col")
        # (array name, axis) -> (band index, band): the one band of tiles kept while blocks use it
        self._bands: dict[tuple[str, int], tuple[int, NDArray[np.float32]]] = {}

    def has(self, name: str) -> bool:
        """Whether the store has the array ``name`` (labels and reversed pairs are optional)."""
        return name in self.store.group

    def _array(self, name: str) -> zarr.Array:
        if not self.has(name):
            raise StoreError(f"the matrix store {self.url} has no {name!r} array")
        return self.store.array(name)

    def document_values(self, name: str) -> list[Hashable]:
        """A document array (``row_ids``, ``col_labels`` …) as a list of plain Python values; one
        that fails to decode is named."""
        try:
            values: list[Hashable] = read_cells(self._array(name), (slice(None),)).tolist()
        except UndecodableChunk as exc:
            raise corrupt_array_error(self.url, name, str(exc)) from exc
        return values

    def document_bytes(self, side: str) -> tuple[NDArray[np.int64], NDArray[np.int64] | None]:
        """``(UTF-8 bytes, scored bytes or None)`` of each document of ``side`` (``"row"`` or
        ``"col"``), both ``(n,) int64``, checked: decodable, and no document scored beyond its
        bytes. ``None`` for a store written before scored bytes were recorded."""
        try:
            full, scored = group_bytes(self.store.group, side)
        except UndecodableChunk as exc:
            raise corrupt_array_error(
                self.url, f"{side}_bytes or {side}_scored_bytes", str(exc)
            ) from exc
        if scored is not None and (scored > full).any():
            raise corrupt_array_error(
                self.url, f"{side}_scored_bytes", "says more bytes were scored than a document has"
            )
        return full, scored

    def complete_rows(self, *, with_transposed: bool = False) -> NDArray[np.bool_]:
        """``(n_rows,) bool``: rows whose every tile is done; ``with_transposed`` also asks for
        the tiles of the transposed band (a square store's C(yx), for ``ncd-min``)."""
        done = self.tiles_done
        band_ok = done.all(axis=1)
        if with_transposed:
            band_ok &= done.all(axis=0)
        return np.repeat(band_ok, self.tile)[: self.n_rows]

    def rows(self, name: str, start: int, stop: int) -> NDArray[np.float32]:
        """``array[start:stop, :]`` of the pair array ``name``, float32 bits, checked."""
        return self._read(name, start, stop, axis=0)

    def columns(self, name: str, start: int, stop: int) -> NDArray[np.float32]:
        """``array[:, start:stop]`` of the pair array ``name``, float32 bits, checked."""
        return self._read(name, start, stop, axis=1)

    def check_block(
        self, name: str, values: NDArray[np.float32], row_start: int, col_start: int
    ) -> None:
        """Raise :class:`~nncd_ray.errors.CorruptTile` if ``values`` (cells of done tiles of
        ``name`` from ``(row_start, col_start)`` on) holds a NaN, infinite or negative code
        length. Two reductions, no temporaries: NaN makes both comparisons false."""
        if values.size == 0:
            return
        low, high = values.min(), values.max()
        if low >= 0 and high < np.inf:
            return
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(values) & (values >= 0))
        i, j = (int(v) for v in np.argwhere(bad)[0])
        r, c = (row_start + i) // self.tile, (col_start + j) // self.tile
        box = self.plan.tile_at(r, c)
        cells = values[
            max(box.row_start - row_start, 0) : box.row_stop - row_start,
            max(box.col_start - col_start, 0) : box.col_stop - col_start,
        ]
        reason = code_length_problem(cells) or "holds an impossible code length"
        raise corrupt_tile_error(self.url, tile_problem(self.plan, r, c, name, reason))

    def _read(self, name: str, start: int, stop: int, *, axis: int) -> NDArray[np.float32]:
        """Rows (``axis=0``) or columns (``axis=1``) ``[start, stop)`` of a pair array; a block
        smaller than a tile is served from its band of tiles, read once while it fits
        :data:`BAND_BYTES`."""
        extent = (self.n_rows, self.n_cols)
        other = extent[1 - axis]
        band = start // self.tile
        band_start, band_stop = band * self.tile, min(extent[axis], (band + 1) * self.tile)
        use_band = (
            stop - start < band_stop - band_start
            and stop <= band_stop
            and (band_stop - band_start) * other * 4 <= BAND_BYTES
        )
        if not use_band:
            return self._read_checked(name, start, stop, axis=axis)
        cached = self._bands.get((name, axis))
        if cached is None or cached[0] != band:
            self._bands.pop((name, axis), None)  # free the old band before reading the next
            data = self._read_checked(name, band_start, band_stop, axis=axis)
            cached = self._bands[(name, axis)] = (band, data)
        part = slice(start - band_start, stop - band_start)
        return cached[1][part, :] if axis == 0 else cached[1][:, part]

    def _read_checked(self, name: str, start: int, stop: int, *, axis: int) -> NDArray[np.float32]:
        """Rows or columns ``[start, stop)`` of a pair array, every chunk decoded and every value
        checked."""
        whole = slice(0, self.n_cols if axis == 0 else self.n_rows)
        rows, cols = (slice(start, stop), whole) if axis == 0 else (whole, slice(start, stop))
        data = read_chunkwise(self._array(name), rows, cols, url=self.url)
        self.check_block(name, data, rows.start, cols.start)
        return data

    def _read_markers(self) -> NDArray[np.bool_]:
        """``tiles_done`` as a bool array; a marker chunk that fails to decode is named."""
        array = self._array("tiles_done")
        try:
            return np.asarray(read_cells(array, (slice(None), slice(None))), dtype=bool)
        except UndecodableChunk:
            pass
        grid_rows, grid_cols = (int(n) for n in array.shape)
        done = np.zeros((grid_rows, grid_cols), dtype=bool)
        for r in range(grid_rows):
            for c in range(grid_cols):
                try:
                    cell = read_cells(array, (slice(r, r + 1), slice(c, c + 1)))
                except UndecodableChunk as exc:
                    raise CorruptTile(
                        f"store {self.url}: the completion marker of tile ({r}, {c}) {exc}; "
                        f"{fix_hint(self.url)}"
                    ) from exc
                done[r, c] = bool(cell[0, 0])
        return done

    def _read_document_bits(self, side: str) -> NDArray[np.float64]:
        """``row_bits`` or ``col_bits`` as float64, checked wherever a done tile wrote them: a
        chunk that fails to decode, or a NaN, infinite or negative C(x) there, is refused naming
        the first done tile of the band (any tile of the band rewrites the chunk)."""
        name = f"{side}_bits"
        array = self._array(name)
        done, plan = self.tiles_done, self.plan
        axis = 0 if side == "row" else 1
        band_done = done.any(axis=1 - axis)
        n = plan.n_rows if axis == 0 else plan.n_cols
        if self.store.sparse and side == "col":
            return self._read_owned_bits(array)
        try:  # one request, chunks fetched concurrently; band by band only to name a bad chunk
            whole: NDArray[Any] | None = read_cells(array, (slice(0, n),))
        except UndecodableChunk:
            whole = None
        values = np.full(n, np.nan, dtype=np.float64)
        for band in np.flatnonzero(band_done):
            part = slice(int(band) * plan.tile, min((int(band) + 1) * plan.tile, n))
            first = int(np.flatnonzero(done[band] if axis == 0 else done[:, band])[0])
            where = (int(band), first) if axis == 0 else (first, int(band))
            try:
                chunk = np.asarray(
                    whole[part] if whole is not None else read_cells(array, (part,)),
                    dtype=np.float64,
                )
            except UndecodableChunk as exc:
                raise corrupt_tile_error(
                    self.url, tile_problem(plan, *where, name, str(exc))
                ) from exc
            reason = code_length_problem(chunk)
            if reason is not None:
                raise corrupt_tile_error(self.url, tile_problem(plan, *where, name, reason))
            values[part] = chunk
        return values

    def _read_owned_bits(self, array: zarr.Array) -> NDArray[np.float64]:
        """A sparse store's ``col_bits`` (C(y) of every reference), checked in the column bands
        whose owner tile is done (:mod:`nncd_ray.matrix.store.sparse`); NaN elsewhere."""
        n, plan = self.store.n_refs, self.plan
        try:
            whole: NDArray[Any] | None = read_cells(array, (slice(0, n),))
        except UndecodableChunk:
            whole = None
        values = np.full(n, np.nan, dtype=np.float64)
        written = column_bands_written(self.tiles_done, n, plan.tile)
        for band in (int(b) for b in np.flatnonzero(written)):
            part = slice(band * plan.tile, min((band + 1) * plan.tile, n))
            where = column_band_owner(plan.grid, band)
            try:
                chunk = np.asarray(
                    whole[part] if whole is not None else read_cells(array, (part,)),
                    dtype=np.float64,
                )
            except UndecodableChunk as exc:
                raise corrupt_tile_error(
                    self.url, tile_problem(plan, *where, "col_bits", str(exc))
                ) from exc
            reason = code_length_problem(chunk)
            if reason is not None:
                raise corrupt_tile_error(self.url, tile_problem(plan, *where, "col_bits", reason))
            values[part] = chunk
        return values


__all__ = ["BAND_BYTES", "StoreReader"]

"""NCD rows of a sparse store (candidate pruning): each query's distances to its M candidates,
scattered into a ``(rows, references)`` block that is NaN everywhere else.

A NaN distance is never a neighbour (:mod:`nncd_ray.knn.neighbours`), so the k-NN stage, its tie
rule (distance, then reference index), voting, hubness and reports run unchanged and find each
query's neighbours among its candidates. Memory is that of a dense store's block of the same rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import ConfigError
from nncd_ray.matrix.store.chunks import UndecodableChunk, corrupt_tile_error, tile_problem
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.matrix.store.sparse import SparseStore, candidates_problem
from nncd_ray.ncd import VARIANTS, ncd_cells

# default memory budget of one float64 block of distances (as nncd_ray.knn.evaluate.BLOCK_BYTES)
BLOCK_BYTES = 16 << 20


def chosen_variant(
    reader: StoreReader, variant: str | None, *, cells: str, store: str, reversed_in: bool = False
) -> str:
    """The NCD variant to read ``reader``'s store with: ``variant``, else the store's own, else
    ``ncd``; a clear error for an unknown one, or for ``ncd-min`` when the store lacks C(yx)
    (``reversed_in``: the store holds C(yx) in its own cells, as a square one does). ``cells``
    and ``store`` name the store's cells and kind in that error."""
    stored = reader.store.variant
    chosen = str(variant or stored or "ncd")
    if chosen not in VARIANTS:
        raise ConfigError(f"unknown NCD variant {chosen!r}; choose one of: {', '.join(VARIANTS)}")
    if chosen == "ncd-min" and not reversed_in and not reader.has("pair_bits_reversed"):
        raise ConfigError(
            f"variant ncd-min needs C(yx) for every {cells}, and the {store} store "
            f"{reader.url} was computed for {stored!r} without pair_bits_reversed; use "
            "--variant ncd or recompute the matrix with --variant ncd-min"
        )
    return chosen


class CandidateRows:
    """The ``NCDRows`` of a sparse store (see the module docstring)."""

    def __init__(self, reader: StoreReader, variant: str | None) -> None:
        self.reader = reader
        self.variant = chosen_variant(reader, variant, cells="candidate", store="sparse")
        # references (columns of the dense matrix) and candidates per query
        self.n_refs = reader.store.n_refs
        self.n_candidates = reader.n_cols

    def candidates(self, start: int, stop: int) -> NDArray[np.int64]:
        """``(stop - start, M) int64`` column indices of the candidates of rows ``[start, stop)``,
        checked (a chunk that fails to decode or names impossible columns is a bad tile)."""
        reader = self.reader
        values = None
        try:
            values = SparseStore.read_candidates(
                reader.store, slice(start, stop), slice(0, self.n_candidates)
            )
            reason = candidates_problem(values, self.n_refs)
        except UndecodableChunk as exc:
            reason = str(exc)
        if reason is None and values is not None:
            return values
        band = start // reader.tile
        raise corrupt_tile_error(
            reader.url, tile_problem(reader.plan, band, 0, "candidates", reason or "is unreadable")
        )

    def complete_rows(self) -> NDArray[np.bool_]:
        """``(n_rows,) bool``: rows whose every tile is done and whose every candidate's C(y) is
        written (its column band's owner tile is done)."""
        usable = self.reader.complete_rows()
        known = np.isfinite(self.reader.col_bits)
        tile = self.reader.tile
        for start in range(0, self.reader.n_rows, tile):
            stop = min(start + tile, self.reader.n_rows)
            if usable[start:stop].any():
                usable[start:stop] &= known[self.candidates(start, stop)].all(axis=1)
        return usable

    def block_size(self, requested: int | None) -> int:
        """Rows per block: ``requested``, else as many as fit :data:`BLOCK_BYTES` of float64
        distances to every reference, whole tiles when they fit."""
        if requested is not None:
            if requested < 1:
                raise ConfigError(f"--block-rows must be at least 1, not {requested}")
            return requested
        fitting = max(1, BLOCK_BYTES // (8 * self.n_refs))
        tile = self.reader.tile
        return fitting // tile * tile if fitting >= tile else fitting

    def candidate_distances(
        self, row_start: int, row_stop: int
    ) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """``(rows, M)`` NCD of each row to its candidates, and the candidates' column indices."""
        reader = self.reader
        candidates = self.candidates(row_start, row_stop)
        reversed_block: NDArray[Any] | None = None
        if self.variant == "ncd-min":
            reversed_block = reader.rows("pair_bits_reversed", row_start, row_stop)
        distances = ncd_cells(
            reader.row_bits[row_start:row_stop],
            reader.col_bits[candidates],
            reader.rows("pair_bits", row_start, row_stop),
            self.variant,
            pair_bits_reversed=reversed_block,
        )
        return distances, candidates

    def distances(self, row_start: int, row_stop: int) -> NDArray[np.float64]:
        """``(row_stop - row_start, n_refs) float64``: NCD at each row's candidates, NaN
        elsewhere."""
        values, candidates = self.candidate_distances(row_start, row_stop)
        block = np.full((row_stop - row_start, self.n_refs), np.nan, dtype=np.float64)
        np.put_along_axis(block, candidates, values, axis=1)
        return block


__all__ = ["CandidateRows", "chosen_variant"]

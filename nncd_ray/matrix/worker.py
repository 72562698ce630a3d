"""What computes one tile: score it with a scorer built once, store it, report metadata.

The same :class:`TileWorker` runs in each Ray actor and, for ``executor="local"``, in the driver.
It writes the tile's data itself (chunk-aligned, so workers never overwrite each other) and returns
only small metadata; the driver then sets the tile's completion marker. So the driver never holds
the matrix, and a worker that dies mid-write leaves a tile without a marker, which is recomputed.

A worker may compute two tiles at once (a Ray actor runs two threads): the scorer's device work
is one tile at a time (a lock), while tokenizing and planning the next tile (``scorer.prepare``)
and writing the previous one happen beside it, so a GPU does not wait for the host between tiles.

Before writing, the worker checks what the scorer returned: a code length that is NaN, infinite or
negative is refused (:class:`~nncd_ray.errors.InvalidCodeLengths`), so a store never marks such a
tile done; and it records the UTF-8 bytes each code length covers (``scorer.scored_bytes``), which
bits per byte divides by.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import InvalidCodeLengths
from nncd_ray.matrix.store.chunks import code_length_problem
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.sparse import SparseStore, owned_column_bands
from nncd_ray.matrix.tiling import Tile
from nncd_ray.scorers import ScorerSpec, make_scorer
from nncd_ray.scorers.base import TileScores, utf8_lengths


@dataclass(frozen=True, kw_only=True)
class TileResult:
    """Metadata of one computed tile (no scores: those are in the store already)."""

    index_row: int
    index_col: int
    pairs: int
    # where it ran: Ray node id (hex) or "local", and the worker's process id
    node_id: str
    pid: int
    # seconds spent scoring (compressor work) and writing to the store
    score_seconds: float
    write_seconds: float
    # tokens (LM) or bytes (classical) through the compressor, from TileScores.work_units
    work_units: int


class TileWorker:
    """Builds the scorer once and computes tiles of one job.

    ``row_texts``/``col_texts`` are the job's documents in matrix order (``col_texts`` ``None`` for
    a square job). The store is opened on the first tile, so workers can start (and report their
    scorer's fingerprint) before the driver has created the store.
    """

    def __init__(
        self,
        *,
        spec: ScorerSpec,
        store_url: str,
        storage_options: Mapping[str, Any] | None,
        row_texts: Sequence[str],
        col_texts: Sequence[str] | None,
        node_id: str = "local",
    ) -> None:
        self.scorer = make_scorer(spec)
        self.store_url = store_url
        self.storage_options = dict(storage_options or {})
        self.row_texts = tuple(row_texts)
        self.col_texts = self.row_texts if col_texts is None else tuple(col_texts)
        self.node_id = node_id
        self._store: MatrixStore | None = None
        self._store_lock = threading.Lock()
        # the scorer's device work, one tile at a time (see the module docstring)
        self._device = threading.Lock()

    @property
    def on_gpu(self) -> bool:
        """Whether the scorer computes on a GPU."""
        device = getattr(self.scorer, "device", None)
        return getattr(device, "type", None) == "cuda"

    def fingerprint(self) -> dict[str, Any]:
        """The scorer's fingerprint (everything that changes the numbers)."""
        return dict(self.scorer.fingerprint())

    @property
    def store(self) -> MatrixStore:
        with self._store_lock:
            if self._store is None:
                self._store = MatrixStore.open(
                    self.store_url, storage_options=self.storage_options, mode="r+"
                )
            return self._store

    def _scores(self, rows: Sequence[str], cols: Sequence[str], *, want_cols: bool) -> TileScores:
        """The scorer's tile, with its device work under the device lock; a scorer that can
        split a tile (``prepare``/``launch``, the LM) plans it and waits for its results outside
        the lock."""
        prepare = getattr(self.scorer, "prepare", None)
        launch = getattr(self.scorer, "launch", None)
        if prepare is None or launch is None:
            with self._device:
                if want_cols:
                    return self.scorer.score_tile(rows, cols)
                pair = self.scorer.pair_bits(rows, cols)
                return TileScores(row_bits=np.zeros(0), col_bits=np.zeros(0), pair_bits=pair)
        prepared = prepare(rows, cols, want_cols=want_cols)
        with self._device:
            pending = launch(prepared)
        scores: TileScores = pending.result()
        return scores

    def scored_bytes(self, texts: Sequence[str]) -> NDArray[np.int64]:
        """``(len(texts),) int64`` UTF-8 bytes each code length covers, checked to lie between 0
        and the text's bytes (a scorer without ``scored_bytes`` covers whole texts)."""
        full = utf8_lengths(texts)
        method = getattr(self.scorer, "scored_bytes", None)
        if method is None:
            return full
        scored = np.asarray(method(texts), dtype=np.int64)
        if scored.shape != full.shape or (scored < 0).any() or (scored > full).any():
            raise InvalidCodeLengths(
                f"scorer {self.scorer.name}: scored_bytes must give 0 to len(utf-8) bytes for "
                f"each of the {len(texts)} texts, not {scored.tolist()[:8]}"
            )
        return scored

    def compute(self, tile: Tile) -> TileResult:
        """Score ``tile`` and write its data (not its marker) to the store."""
        store = self.store  # opened before scoring, so a bad store fails before the slow part
        if store.sparse:
            return self._compute_sparse(store, tile)
        rows = self.row_texts[tile.row_start : tile.row_stop]
        cols = self.col_texts[tile.col_start : tile.col_stop]
        started = time.perf_counter()
        scores = self._scores(rows, cols, want_cols=True)
        work_units = scores.work_units
        reversed_bits = None
        if store.has_reversed:
            # rectangular ncd-min: C(y x) with the column document first, stored row-major
            reversed_bits = self._scores(cols, rows, want_cols=False).pair_bits.T
            work_units *= 2
        arrays = {
            "row_bits": scores.row_bits,
            "col_bits": scores.col_bits,
            "pair_bits": scores.pair_bits,
        }
        if reversed_bits is not None:
            arrays["pair_bits_reversed"] = reversed_bits
        check_code_lengths(tile, arrays)
        row_scored = self.scored_bytes(rows)
        col_scored = self.scored_bytes(cols)
        scored = time.perf_counter()
        store.write_tile(
            tile,
            row_bits=scores.row_bits,
            col_bits=scores.col_bits,
            pair_bits=scores.pair_bits,
            pair_bits_reversed=reversed_bits,
            row_scored_bytes=row_scored,
            col_scored_bytes=col_scored,
        )
        return self._result(tile, started, scored, work_units)

    def _documents(self, texts: Sequence[str]) -> tuple[NDArray[np.float64], int]:
        """``(len(texts),) float64`` C(x) of each text in one scorer call, and its work units."""
        if getattr(self.scorer, "prepare", None) is None:
            with self._device:
                bits = np.asarray(self.scorer.document_bits(texts), dtype=np.float64)
            return bits, int(utf8_lengths(texts).sum())
        scores = self._scores([], texts, want_cols=True)
        return np.asarray(scores.col_bits, dtype=np.float64), int(scores.work_units)

    def _candidate_pairs(
        self, rows: Sequence[str], candidates: NDArray[np.int64], *, reverse: bool
    ) -> tuple[NDArray[np.float64], int]:
        """``(len(rows), m) float64`` C(x y) (``reverse``: C(y x)) of each row x and its
        candidates y (column indices), and the scorer's work units.

        A scorer with ``score_candidates(rows, cols, candidates, reverse=...)`` (returning
        :class:`TileScores` whose ``pair_bits`` is ``(len(rows), m)``) scores them in one call;
        otherwise one scorer call per row: a scorer's tile is a rectangle, and each row has its
        own columns (on a GPU an LM then runs small passes, one row at a time)."""
        method = getattr(self.scorer, "score_candidates", None)
        if method is not None:
            with self._device:
                scores: TileScores = method(rows, self.col_texts, candidates, reverse=reverse)
            return np.asarray(scores.pair_bits, dtype=np.float64), int(scores.work_units)
        out = np.empty(candidates.shape, dtype=np.float64)
        work = 0
        for i, x in enumerate(rows):
            ys = [self.col_texts[j] for j in candidates[i]]
            if reverse:
                scores = self._scores(ys, [x], want_cols=False)
                out[i] = scores.pair_bits[:, 0]
            else:
                scores = self._scores([x], ys, want_cols=False)
                out[i] = scores.pair_bits[0]
            work += int(scores.work_units)
        return out, work

    def _compute_sparse(self, store: MatrixStore, tile: Tile) -> TileResult:
        """A tile of a sparse store (:mod:`nncd_ray.matrix.store.sparse`): rows × candidate
        slots, C(x) of its rows, and C(y) of the column bands it owns."""
        rows = self.row_texts[tile.row_start : tile.row_stop]
        candidates = SparseStore.read_candidates(
            store, slice(tile.row_start, tile.row_stop), slice(tile.col_start, tile.col_stop)
        )
        started = time.perf_counter()
        pair_bits, work_units = self._candidate_pairs(rows, candidates, reverse=False)
        reversed_bits = None
        if store.has_reversed:
            reversed_bits, work = self._candidate_pairs(rows, candidates, reverse=True)
            work_units += work
        bands = owned_column_bands(
            store.plan.grid, store.n_refs, store.tile, tile.index_row, tile.index_col
        )
        band_texts = [
            self.col_texts[b * store.tile : min((b + 1) * store.tile, store.n_refs)] for b in bands
        ]
        documents = [*rows, *(text for texts in band_texts for text in texts)]
        singles, work = self._documents(documents)
        work_units += work
        row_bits = singles[: len(rows)]
        arrays: dict[str, NDArray[Any]] = {
            "row_bits": row_bits,
            "col_bits": singles[len(rows) :],
            "pair_bits": pair_bits,
        }
        if reversed_bits is not None:
            arrays["pair_bits_reversed"] = reversed_bits
        check_code_lengths(tile, arrays)
        column_bands: dict[int, tuple[NDArray[np.float64], NDArray[np.int64]]] = {}
        offset = len(rows)
        for band, texts in zip(bands, band_texts, strict=True):
            column_bands[band] = (
                singles[offset : offset + len(texts)],
                self.scored_bytes(texts),
            )
            offset += len(texts)
        row_scored = self.scored_bytes(rows)
        scored = time.perf_counter()
        SparseStore.write_tile(
            store,
            tile,
            row_bits=row_bits,
            pair_bits=pair_bits,
            pair_bits_reversed=reversed_bits,
            row_scored_bytes=row_scored,
            column_bands=column_bands,
        )
        return self._result(tile, started, scored, work_units)

    def _result(self, tile: Tile, started: float, scored: float, work_units: int) -> TileResult:
        """What the driver learns of a written tile (scored at ``started``..``scored``, written
        from ``scored`` until now)."""
        return TileResult(
            index_row=tile.index_row,
            index_col=tile.index_col,
            pairs=tile.pairs,
            node_id=self.node_id,
            pid=os.getpid(),
            score_seconds=scored - started,
            write_seconds=time.perf_counter() - scored,
            work_units=int(work_units),
        )


def check_code_lengths(tile: Tile, arrays: Mapping[str, NDArray[Any]]) -> None:
    """Refuse a tile whose code lengths (bits) are not all finite and non-negative: such numbers
    are a scorer's failure and must not be stored as a done tile."""
    for name, values in arrays.items():
        problem = code_length_problem(np.asarray(values, dtype=np.float64))
        if problem is not None:
            raise InvalidCodeLengths(
                f"tile {tile.key} (rows {tile.row_start}-{tile.row_stop - 1}, columns "
                f"{tile.col_start}-{tile.col_stop - 1}): the scorer's {name} {problem}; the tile "
                "is not stored"
            )

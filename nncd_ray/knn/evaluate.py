"""Evaluate a matrix store: NCD from the raw code lengths, k-NN in row blocks, metrics, bits/byte.

The store is read through the one checked reader
(:class:`~nncd_ray.matrix.store.reader.StoreReader`) one block of rows at a time and one chunk at a
time, so memory is bounded by ``block_rows × n_cols`` (about ten float64 temporaries of one block
while NCD and k-NN run) plus, when a block is smaller than a tile, the one band of tiles it lies in
(kept only if it fits the reader's ``BAND_BYTES``; it saves decoding every chunk once per block) —
never by the whole matrix. Measured: 256 MiB peak RSS for a 20,000 × 20,000 store with 1000-wide
tiles (``python -m nncd_ray.bench.knn_memory``); 309 MiB with mutual proximity, which reads the
store twice (column statistics first).

A square store is classified leave-one-out (a document is never its own neighbour). ``ncd-min`` on
a square store also reads the transposed block ``pair_bits[:, rows]`` (C(yx)); on a rectangular
store it needs ``pair_bits_reversed``.

A sparse store (candidate pruning, :mod:`nncd_ray.matrix.store.sparse`) is read through
:class:`~nncd_ray.knn.candidate_rows.CandidateRows`: each query's neighbours are found among its
candidates, with the same rule; k may not exceed the candidates per query.

An incomplete matrix is refused (:class:`~nncd_ray.errors.IncompleteMatrix`) unless
``allow_partial``; then only rows whose every needed tile is done are classified, and the report
lists the rows skipped.

Everything read is checked: a chunk that fails to decode (checksum, codec) or a done tile holding
NaN, infinite or negative code lengths is refused with :class:`~nncd_ray.errors.CorruptTile`, one
line naming the tile, its cells and the fix. Bits per byte divides by the bytes each code length
covers (:mod:`nncd_ray.knn.compression`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import ConfigError, IncompleteMatrix, InputError
from nncd_ray.knn.accumulator import KNNAccumulator
from nncd_ray.knn.candidate_rows import CandidateRows, chosen_variant
from nncd_ray.knn.compression import compression_summary
from nncd_ray.knn.labels import LabelCodec
from nncd_ray.knn.mutual_proximity import (
    HUBNESS_REDUCTIONS,
    ColumnMoments,
    mutual_proximity,
    row_moments,
)
from nncd_ray.knn.neighbours import check_ks, mask_own_cells
from nncd_ray.knn.report import EvaluationReport
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.matrix.store.storage_errors import store_errors
from nncd_ray.ncd import ncd_matrix

# default memory budget of one float64 block of distances; NCD and k-NN hold up to ~10 such
# temporaries at once, so the working set is about 10 × BLOCK_BYTES
BLOCK_BYTES = 16 << 20


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """What to evaluate and how."""

    # store path or fsspec URL (s3://bucket/m.zarr)
    store: str
    # numbers of neighbours, all classified in one pass
    ks: tuple[int, ...] = (1, 3, 5, 7)
    # NCD variant; None = the variant the store was computed for
    variant: str | None = None
    # classify the fully computed rows of an incomplete matrix instead of refusing it
    allow_partial: bool = False
    # rows per block; None = as many as fit BLOCK_BYTES of float64 distances (whole tiles if
    # possible)
    block_rows: int | None = None
    # fsspec options of a remote store (endpoint_url, key, secret, …)
    storage_options: Mapping[str, Any] | None = None
    # "none": k-NN over the NCD itself (shared/bench/PROTOCOL.md); "mp": over its mutual
    # proximity (nncd_ray.knn.mutual_proximity), which takes one more pass over the store
    hubness_reduction: str = "none"


class NCDRows:
    """NCD of a store's rows against its columns under one variant, block by block."""

    def __init__(self, reader: StoreReader, variant: str | None) -> None:
        self.reader = reader
        self.variant = chosen_variant(
            reader, variant, cells="pair", store="rectangular", reversed_in=reader.square
        )

    def complete_rows(self) -> NDArray[np.bool_]:
        """``(n_rows,) bool``: rows whose every needed tile is done (for square ``ncd-min`` also
        the tiles of the transposed band, which hold C(yx))."""
        square_min = self.reader.square and self.variant == "ncd-min"
        return self.reader.complete_rows(with_transposed=square_min)

    def block_size(self, requested: int | None) -> int:
        """Rows per block: ``requested``, else as many as fit :data:`BLOCK_BYTES` of float64
        distances, whole tiles when they fit (each chunk is then decoded once)."""
        if requested is not None:
            if requested < 1:
                raise ConfigError(f"--block-rows must be at least 1, not {requested}")
            return requested
        fitting = max(1, BLOCK_BYTES // (8 * self.reader.n_cols))
        tile = self.reader.tile
        return fitting // tile * tile if fitting >= tile else fitting

    def distances(self, row_start: int, row_stop: int) -> NDArray[np.float64]:
        """``(row_stop - row_start, n_cols) float64`` NCD of a block of rows."""
        reader = self.reader
        block = reader.rows("pair_bits", row_start, row_stop)
        reversed_block: NDArray[Any] | None = None
        if self.variant == "ncd-min":
            if reader.square:  # C(y x) with y = column: element [j, i] of the pair matrix
                reversed_block = reader.columns("pair_bits", row_start, row_stop).T
            else:
                reversed_block = reader.rows("pair_bits_reversed", row_start, row_stop)
        return ncd_matrix(
            reader.row_bits[row_start:row_stop],
            reader.col_bits,
            block,
            self.variant,
            pair_bits_reversed=reversed_block,
        )


def _row_blocks(usable: NDArray[np.bool_], block_rows: int, tile: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` blocks of at most ``block_rows`` consecutive usable rows; a block smaller
    than a tile never crosses a tile boundary (so that it lies in one band of chunks)."""
    n = usable.shape[0]
    start = 0
    while start < n:
        if not usable[start]:
            start += 1
            continue
        limit = min(n, start + block_rows)
        if block_rows < tile:
            limit = min(limit, (start // tile + 1) * tile)
        stop = start
        while stop < limit and usable[stop]:
            stop += 1
        yield start, stop
        start = stop


def _column_moments(
    ncd: NCDRows | CandidateRows, blocks: list[tuple[int, int]]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and deviation of every reference's distances over the evaluated queries (first pass
    of mutual proximity; the query itself left out on a square store)."""
    moments = ColumnMoments(ncd.reader.n_cols)
    for row_start, row_stop in blocks:
        moments.add(
            mask_own_cells(
                ncd.distances(row_start, row_stop), row_start if ncd.reader.square else None
            )
        )
    return moments.mean_std()


def _block(
    ncd: NCDRows | CandidateRows,
    row_start: int,
    row_stop: int,
    columns: tuple[NDArray[np.float64], NDArray[np.float64]] | None,
) -> NDArray[np.float64]:
    """The distances k-NN ranks for a block of rows: NCD, or with ``columns`` (each reference's
    mean and deviation) its mutual proximity."""
    distances = ncd.distances(row_start, row_stop)
    if columns is None:
        return distances
    distances = mask_own_cells(distances, row_start if ncd.reader.square else None)
    return mutual_proximity(distances, *row_moments(distances), *columns)


def evaluate_store(config: EvaluationConfig) -> EvaluationReport:
    """Classify the store's rows against its columns for every k; return the report.

    Storage failures (credentials, network, permissions) raise
    :class:`~nncd_ray.errors.StoreError` subclasses; a bad tile raises
    :class:`~nncd_ray.errors.CorruptTile`.
    """
    with store_errors(config.store):
        return _evaluate(config)


def _evaluate(config: EvaluationConfig) -> EvaluationReport:
    started = time.perf_counter()
    if config.hubness_reduction not in HUBNESS_REDUCTIONS:
        raise ConfigError(
            f"unknown hubness reduction {config.hubness_reduction!r}; choose one of: "
            f"{', '.join(HUBNESS_REDUCTIONS)}"
        )
    store = MatrixStore.open(config.store, storage_options=config.storage_options)
    reader = StoreReader(store)
    ncd: NCDRows | CandidateRows
    if store.sparse:
        if config.hubness_reduction != "none":
            raise ConfigError(
                f"--hubness-reduction {config.hubness_reduction} needs every query's distance to "
                f"every reference, and {config.store} is a sparse store (each query's "
                f"{reader.n_cols} candidates only); use --hubness-reduction none"
            )
        ncd = CandidateRows(reader, config.variant)
        n_refs, n_candidates = ncd.n_refs, ncd.n_candidates
    else:
        ncd = NCDRows(reader, config.variant)
        n_refs, n_candidates = reader.n_cols, reader.n_cols - (1 if reader.square else 0)
    if not reader.has("col_labels"):
        raise InputError(
            f"the store {config.store} has no reference labels (col_labels): k-NN needs labelled "
            "references; compute the matrix from labelled documents"
        )
    reference_labels = reader.document_values("col_labels")
    query_labels = reader.document_values("row_labels") if reader.has("row_labels") else None
    row_ids = [str(v) for v in reader.document_values("row_ids")]
    col_ids = [str(v) for v in reader.document_values("col_ids")]
    ks = check_ks(config.ks, n_candidates)

    usable = ncd.complete_rows()
    skipped = np.flatnonzero(~usable)
    if skipped.size:
        done = int(reader.tiles_done.sum())
        if not config.allow_partial:
            raise IncompleteMatrix(
                f"store {config.store} has {reader.tiles_done.size - done} of "
                f"{reader.tiles_done.size} tiles not computed ({skipped.size} of "
                f"{reader.n_rows} rows incomplete); resume it with `nncd matrix` and the same "
                "settings, or pass --allow-partial to classify the complete rows only"
            )
        if not usable.any():
            raise IncompleteMatrix(
                f"store {config.store} has no fully computed row yet ({done} of "
                f"{reader.tiles_done.size} tiles done); nothing to classify"
            )

    codec = LabelCodec.from_labels(reference_labels, query_labels or [])
    accumulator = KNNAccumulator(reference_labels, ks, codec)
    block_rows = ncd.block_size(config.block_rows)
    blocks = list(_row_blocks(usable, block_rows, reader.tile))
    columns = _column_moments(ncd, blocks) if config.hubness_reduction == "mp" else None
    for row_start, row_stop in blocks:
        # no name holds a block across iterations: one block in memory at a time
        accumulator.add_block(
            _block(ncd, row_start, row_stop, columns),
            diagonal_offset=row_start if reader.square else None,
            overwrite_input=True,  # the block is ours: no second copy
        )

    evaluated = np.flatnonzero(usable)
    predicted = accumulator.predicted_codes()
    true = [query_labels[i] for i in evaluated] if query_labels is not None else None
    results = tuple(accumulator.metrics(true)) if true is not None else ()
    compressor = store.config.get("compressor")
    return EvaluationReport(
        store=config.store,
        variant=ncd.variant,
        square=reader.square,
        ks=ks,
        n_rows=reader.n_rows,
        n_queries=int(evaluated.size),
        n_refs=n_refs,
        candidates=ncd.n_candidates if isinstance(ncd, CandidateRows) else None,
        results=results,
        compression=compression_summary(reader),
        compressor=compressor if isinstance(compressor, dict) else None,
        skipped_rows=tuple(int(i) for i in skipped),
        query_ids=tuple(row_ids[i] for i in evaluated),
        query_rows=tuple(int(i) for i in evaluated),
        true_labels=tuple(true) if true is not None else None,
        predictions={k: tuple(codec.decode(codes)) for k, codes in predicted.items()},
        hubness=tuple(accumulator.hubness()),
        hubness_reduction=config.hubness_reduction,
        reference_ids=tuple(col_ids),
        reference_labels=tuple(reference_labels),
        block_rows=block_rows,
        seconds=time.perf_counter() - started,
    )

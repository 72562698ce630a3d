"""The sparse job (candidate pruning, ``nncd matrix --candidates M``): the scorer computes C(xy)
only for the M references that a cheap prefilter ranks nearest to each query.

Three phases, each resumable, all under the caller's lease on one store
(:mod:`nncd_ray.matrix.store.sparse` describes the layout):

1. the prefilter's data (a classical compressor's dense matrix through the engine itself, or the
   sentence embeddings) in the store's ``prefilter`` group: only what is missing is computed;
   with ``hubs``, also the scorer's probe of a few sample queries (:mod:`nncd_ray.matrix.hubs`);
2. each query's M candidates, in the prefilter's order (distance, then column index), written row
   band by row band; then the ``candidates_written`` attribute. On resume every band is checked,
   and a band that fails to decode or names impossible columns is chosen again from the prefilter
   (its tiles then lose their markers);
3. the scorer's tiles of the ``(queries, M)`` grid, exactly as in a dense job (markers, retries,
   verification on resume, Ray or in-process); the tiles that own a band of ``col_bits`` run first.

Another M, another prefilter, or the dense layout is another config: a store computed with one is
refused for the others before any work.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import ConfigError
from nncd_ray.matrix.config import DEFAULT_TILE, MatrixConfig
from nncd_ray.matrix.failures import RetryPolicy
from nncd_ray.matrix.hubs import HUBS_GROUP, hub_fingerprint, hubs_first, run_hub_probe
from nncd_ray.matrix.prefilter import make_prefilter
from nncd_ray.matrix.prefilter.base import Prefilter, PrefilterJob, PrefilterSummary
from nncd_ray.matrix.store.chunks import UndecodableChunk
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.sparse import (
    SPARSE,
    SparseStore,
    candidates_problem,
    owned_column_bands,
    prefilter_url,
)
from nncd_ray.matrix.tile_job import TileJob, job_fingerprint, run_tiles
from nncd_ray.matrix.tiling import Tile, TilePlan

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from nncd_ray.data.corpus import Corpus
    from nncd_ray.matrix.store.lease import Lease
    from nncd_ray.matrix.tile_ledger import TileLedger

log = logging.getLogger(__name__)


def nearest_candidates(distances: NDArray[Any], m: int) -> NDArray[np.int32]:
    """``(rows, m) int32``: each row's ``m`` smallest distances' column indices, nearest first,
    equal distances in column order (a stable sort), so the first m' < m are those of m'."""
    values = np.asarray(distances, dtype=np.float64)
    order = np.argsort(values, axis=1, kind="stable")[:, :m]
    return np.asarray(order, dtype=np.int32)


def check_sparse_request(config: MatrixConfig, cols: Corpus | None) -> tuple[int, Corpus]:
    """M and the references, after refusing what cannot be pruned: a square job, M above the
    references."""
    m = config.candidates
    if m is None:
        raise ValueError("a sparse job needs config.candidates")
    if cols is None:
        raise ConfigError(
            "--candidates needs a rectangular job (queries against references: --queries and "
            "--refs, or a --protocol); a square --input job computes every pair"
        )
    if m > len(cols):
        raise ConfigError(
            f"--candidates {m} is more than the {len(cols)} references; choose at most "
            f"{len(cols)} (or leave --candidates out for every pair)"
        )
    return m, cols


def sparse_fingerprint(
    config: MatrixConfig, rows: Corpus, cols: Corpus, prefilter: Prefilter
) -> dict[str, Any]:
    """The store's ``config`` attribute without the compressor: the dense job's, plus the layout,
    M and the prefilter's fingerprint (all three part of what resume compares)."""
    return {
        **job_fingerprint(config, rows, cols),
        "layout": SPARSE,
        "candidates": config.candidates,
        "prefilter": prefilter.fingerprint(),
        "hubs": hub_fingerprint(config.hubs, config.hub_sample) if config.hubs else None,
    }


def run_sparse(
    config: MatrixConfig,
    rows: Corpus,
    cols: Corpus | None,
    lease: Lease,
    started: float,
    policy: RetryPolicy,
) -> tuple[TileLedger, dict[str, Any]]:
    """Run the three phases (see the module docstring); return the scorer's ledger and the
    prefilter phase's summary (:meth:`PrefilterSummary.to_dict`)."""
    m, refs = check_sparse_request(config, cols)
    prefilter = make_prefilter(config.prefilter)
    check_available = getattr(prefilter, "check_available", None)
    if check_available is not None:  # a missing optional extra, before anything is written
        check_available()
    options = dict(config.storage_options or {})
    if config.overwrite:
        MatrixStore.delete(config.store, storage_options=options)
    tile = config.tile
    if tile is None:
        tile = MatrixStore.existing_tile(config.store, storage_options=options) or DEFAULT_TILE
    config = replace(config, tile=tile, overwrite=False)
    base = sparse_fingerprint(config, rows, refs, prefilter)
    # refuse another config (dense, another M or prefilter …) before any work
    MatrixStore.check_existing(config.store, base, storage_options=options)
    plan = TilePlan(n_rows=len(rows), n_cols=m, tile=tile)
    store = SparseStore.open_or_create(
        config.store,
        plan=plan,
        n_refs=len(refs),
        variant=config.variant,
        config=base,
        rows=rows,
        cols=refs,
        scorer={"name": config.scorer.name, "options": dict(config.scorer.options)},
        storage_options=options,
    )
    summary = _choose_candidates(config, rows, refs, lease, started, store, prefilter)

    def adopt(_: MatrixConfig, __: TilePlan, compressor: Mapping[str, Any]) -> MatrixStore:
        SparseStore.adopt_compressor(store, compressor)
        return store

    tiles = TileJob(plan=lambda _: plan, open_store=adopt, order=_owners_first(plan, len(refs)))
    ledger = run_tiles(config, rows, refs, lease, started, policy, tiles)
    return ledger, summary.to_dict()


def _owners_first(plan: TilePlan, n_refs: int) -> Callable[[list[Tile]], list[Tile]]:
    """Order of the tiles to compute: those that write a band of ``col_bits`` first (a row's
    NCD needs C(y) of its candidates), then the rest, each group in the engine's order."""

    def order(todo: list[Tile]) -> list[Tile]:
        def owns(t: Tile) -> bool:
            return bool(owned_column_bands(plan.grid, n_refs, plan.tile, t.index_row, t.index_col))

        return [t for t in todo if owns(t)] + [t for t in todo if not owns(t)]

    return order


def _bad_bands(store: MatrixStore, plan: TilePlan, m: int) -> list[int]:
    """Row bands whose candidates are still to choose: all of them before the first run has
    written them; then those that fail to decode or name impossible columns."""
    bands = list(range(plan.grid[0]))
    if not SparseStore.candidates_written(store):
        return bands
    bad = []
    for band in bands:
        start, stop = band * plan.tile, min((band + 1) * plan.tile, plan.n_rows)
        try:
            stored = SparseStore.read_candidates(store, slice(start, stop), slice(0, m))
            problem = candidates_problem(stored, store.n_refs)
        except UndecodableChunk as exc:
            problem = str(exc)
        if problem is not None:
            log.warning(
                "candidates of rows %d-%d %s: choosing them again", start, stop - 1, problem
            )
            bad.append(band)
    return bad


def _choose_candidates(
    config: MatrixConfig,
    rows: Corpus,
    refs: Corpus,
    lease: Lease,
    started: float,
    store: MatrixStore,
    prefilter: Prefilter,
) -> PrefilterSummary:
    """Phases 1 and 2 (see the module docstring): compute what is missing of the prefilter's data
    and choose the candidates of every row band not written yet. On a resume where every band's
    candidates are good, neither runs (nothing is written before the scorers start, so a store
    computed with another compressor is refused untouched)."""
    plan, m = store.plan, store.plan.n_cols
    bad = _bad_bands(store, plan, m)
    if not bad:
        return PrefilterSummary(name=prefilter.name, computed=0, unit="computed", seconds=0.0)
    url = prefilter_url(config.store)
    job = PrefilterJob(url=url, config=config, rows=rows, cols=refs, lease=lease, started=started)
    summary = prefilter.compute(job)
    reader = prefilter.open(url, storage_options=config.storage_options)
    hubs = np.zeros(0, dtype=np.int64)
    if config.hubs:
        stored = store.attrs.get(HUBS_GROUP)
        if isinstance(stored, dict):  # chosen by an earlier run
            hubs = np.asarray(stored["columns"], dtype=np.int64)
        else:
            hubs, probe = run_hub_probe(config, rows, refs, lease, started)
            store.update_attrs({HUBS_GROUP: probe})
            summary = replace(summary, hub_probe=probe)
    written = SparseStore.candidates_written(store)
    mask = store.done_mask() if written else None
    for band in bad:
        start, stop = band * plan.tile, min((band + 1) * plan.tile, plan.n_rows)
        distances = hubs_first(reader.distances(start, stop), hubs)
        SparseStore.write_candidates(store, start, nearest_candidates(distances, m))
        if mask is not None:  # tiles computed for the candidates that were lost
            for index_col in np.flatnonzero(mask[band]):
                store.unmark(band, int(index_col))
    if not written:
        SparseStore.mark_candidates_written(store)
    return summary


__all__ = ["check_sparse_request", "nearest_candidates", "run_sparse", "sparse_fingerprint"]

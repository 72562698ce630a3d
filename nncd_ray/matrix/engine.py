"""The matrix engine: compute a (resumable, fault-tolerant) matrix of code lengths into a store.

``compute_matrix(config, rows, cols)`` takes the store's lease, refuses a store computed with other
settings, and computes only the tiles whose completion marker is not set: on a Ray cluster
(``executor="ray"``, a pool of scorer actors, see :mod:`nncd_ray.matrix.cluster.executor`) or in
this process (``executor="local"``, same store and resume semantics, for small runs and benchmarks).

Workers write each tile's data; the driver writes the tile's marker after the worker reported
success, keeps counters, and never holds the matrix. A tile that fails ``max_attempts`` times is
recorded in the store's ``failed_tiles``; the job finishes every other tile and then raises
:class:`~nncd_ray.errors.TileFailed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nncd_ray.errors import TileFailed
from nncd_ray.matrix.config import DEFAULT_TILE, GPU_TILE, MatrixConfig
from nncd_ray.matrix.failures import RetryPolicy, classify
from nncd_ray.matrix.store.fingerprint import corpus_fingerprint
from nncd_ray.matrix.store.layout import FORMAT
from nncd_ray.matrix.store.lease import Lease
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.tile_ledger import MatrixSummary, TileLedger
from nncd_ray.matrix.tiling import Tile, TilePlan
from nncd_ray.matrix.worker import TileWorker

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus

log = logging.getLogger(__name__)


def default_tile(config: MatrixConfig, *, on_gpus: bool) -> MatrixConfig:
    """``config`` with its tile set: the one asked for (or the resumed store's), else
    ``GPU_TILE`` when the scorers run on GPUs and ``DEFAULT_TILE`` otherwise."""
    if config.tile is not None:
        return config
    return replace(config, tile=GPU_TILE if on_gpus else DEFAULT_TILE)


def _plan(config: MatrixConfig, rows: Corpus, cols: Corpus | None) -> TilePlan:
    if config.tile is None:
        raise ValueError("the tile edge is resolved before the tiles are planned")
    n_cols = len(rows if cols is None else cols)
    return TilePlan(n_rows=len(rows), n_cols=n_cols, tile=config.tile)


def job_fingerprint(config: MatrixConfig, rows: Corpus, cols: Corpus | None) -> dict[str, Any]:
    """The store's ``config`` attribute without the compressor part (known before any worker)."""
    return {
        "format": FORMAT,
        "variant": config.variant,
        "tile": config.tile,
        "square": cols is None,
        "rows": corpus_fingerprint(rows),
        "cols": corpus_fingerprint(rows if cols is None else cols),
    }


def compute_matrix(config: MatrixConfig, rows: Corpus, cols: Corpus | None = None) -> MatrixSummary:
    """Compute the missing tiles of the ``rows × cols`` matrix (``rows × rows`` when ``cols`` is
    None) into ``config.store`` and return what was done.

    Raises StoreLocked (another driver holds the store), StoreMismatch (the store was computed with
    other settings; it is left unchanged), ClusterError (the cluster cannot host an actor) and,
    after every other tile is stored, TileFailed (some tiles failed ``max_attempts`` times).
    """
    config.validate()
    started = time.perf_counter()
    options = dict(config.storage_options or {})
    policy = RetryPolicy(max_attempts=config.max_attempts)
    with Lease(config.store, storage_options=options) as lease:
        if config.tile is None and not config.overwrite:
            stored = MatrixStore.existing_tile(config.store, storage_options=options)
            config = replace(config, tile=stored)  # resuming: the store's own tile
        if config.tile is not None and not config.overwrite:
            # refuse a wrong resume before starting a cluster or loading a model
            base = job_fingerprint(config, rows, cols)
            MatrixStore.check_existing(config.store, base, storage_options=options)
        if config.executor == "local":
            ledger = _run_local(config, rows, cols, lease, started, policy)
        else:
            from nncd_ray.matrix.cluster.executor import RayExecutor

            with RayExecutor(config, rows, cols) as executor:
                fingerprint = executor.start()
                config = default_tile(config, on_gpus=executor.gpus_per_actor > 0)
                plan, base = _plan(config, rows, cols), job_fingerprint(config, rows, cols)
                store = _open_store(config, plan, base, fingerprint, rows, cols)
                ledger = TileLedger.begin(
                    store, plan, executor="ray", progress=config.progress, started=started
                )
                try:
                    executor.run(ledger.todo, ledger, lease, policy)
                finally:
                    ledger.close()
    summary = ledger.summary()
    if summary.tiles_failed or policy.stopped is not None:
        error = TileFailed(failure_message(config, summary, policy))
        error.summary = summary  # type: ignore[attr-defined]
        raise error
    return summary


def failure_message(config: MatrixConfig, summary: MatrixSummary, policy: RetryPolicy) -> str:
    """The one line that ends a job with failed tiles: what failed, whether it was retried, what
    is kept, and what to do (never "run it again" for a failure that would repeat)."""
    stored = summary.tiles_computed + summary.tiles_skipped
    kept = (
        f"the {stored} tiles computed so far are kept in {config.store}"
        if stored
        else f"no tile is stored in {config.store} yet"
    )
    stopped = policy.stopped
    if stopped is not None:
        key, failure = stopped
        start = (
            f"stopped: the first {policy.stop_after} tiles failed the same way"
            if summary.tiles_computed == 0
            else f"stopped: {policy.stop_after} tiles in a row failed the same way"
        )
        return (
            f"{start} (tile {key}: {failure.message}); not retried: it fails the same way every "
            f"time; {policy.not_attempted} of {summary.tiles_total} tiles not computed; {kept}; "
            "fix the cause first: the same command would fail the same way"
        )
    deterministic = policy.deterministic_failures
    if deterministic:
        key, failure = next(iter(deterministic.items()))
        return (
            f"{summary.tiles_failed} of {summary.tiles_total} tiles failed (tile {key}: "
            f"{failure.message}); not retried: it fails the same way every time; every other "
            f"tile is stored in {config.store}; fix the cause first: the same command would fail "
            "the same way"
        )
    first_key, first_error = next(iter(summary.failed_tiles.items()))
    return (
        f"{summary.tiles_failed} of {summary.tiles_total} tiles failed after "
        f"{config.max_attempts} attempts each (tile {first_key}: {first_error}); every other "
        f"tile is stored in {config.store}; run the same command again to retry them"
    )


def _open_store(
    config: MatrixConfig,
    plan: TilePlan,
    base: Mapping[str, Any],
    compressor: Mapping[str, Any],
    rows: Corpus,
    cols: Corpus | None,
) -> MatrixStore:
    return MatrixStore.create_or_resume(
        config.store,
        plan=plan,
        variant=config.variant,
        config={**base, "compressor": dict(compressor)},
        rows=rows,
        cols=cols,
        scorer={"name": config.scorer.name, "options": dict(config.scorer.options)},
        storage_options=config.storage_options,
        overwrite=config.overwrite,
    )


def _run_local(
    config: MatrixConfig,
    rows: Corpus,
    cols: Corpus | None,
    lease: Lease,
    started: float,
    policy: RetryPolicy,
) -> TileLedger:
    """The in-process executor: same store, markers, retries and counters as the Ray one."""
    worker = TileWorker(
        spec=config.scorer,
        store_url=config.store,
        storage_options=config.storage_options,
        row_texts=rows.texts,
        col_texts=None if cols is None else cols.texts,
    )
    config = default_tile(config, on_gpus=worker.on_gpu)
    plan, base = _plan(config, rows, cols), job_fingerprint(config, rows, cols)
    store = _open_store(config, plan, base, worker.fingerprint(), rows, cols)
    ledger = TileLedger.begin(
        store, plan, executor="local", progress=config.progress, started=started
    )
    ledger.worker_ready()
    try:
        for position, tile in enumerate(ledger.todo):
            lease.check()
            if policy.stopped is not None:
                policy.not_attempted = len(ledger.todo) - position
                break
            _compute_with_retries(worker, tile, ledger, policy)
    finally:
        ledger.close()
    return ledger


def _compute_with_retries(
    worker: TileWorker, tile: Tile, ledger: TileLedger, policy: RetryPolicy
) -> None:
    while True:
        try:
            result = worker.compute(tile)
        except Exception as exc:  # any failure of one tile: classify, retry or record it
            if not policy.on_failure(tile, classify(exc), ledger):
                return
            continue
        policy.on_success(tile)
        ledger.tile_done(tile, result)
        return


__all__ = [
    "MatrixConfig",
    "MatrixSummary",
    "compute_matrix",
    "failure_message",
    "job_fingerprint",
]

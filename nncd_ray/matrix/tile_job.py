"""Running the tiles of one store: in this process or on Ray actors, with the same markers, retries
and counters; shared by the dense job (:mod:`nncd_ray.matrix.engine`) and the sparse one
(:mod:`nncd_ray.matrix.sparse_job`), which differ only in how the tiles are planned and the store
is opened (:class:`TileJob`).

The caller holds the store's lease. A tile that fails ``max_attempts`` times is recorded in the
store's ``failed_tiles``; the job finishes every other tile, and :func:`raise_if_failed` then
raises :class:`~nncd_ray.errors.TileFailed` with the one line that says what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from nncd_ray.errors import TileFailed
from nncd_ray.matrix.config import DEFAULT_TILE, GPU_TILE, MatrixConfig
from nncd_ray.matrix.failures import RetryPolicy, classify
from nncd_ray.matrix.store.fingerprint import corpus_fingerprint
from nncd_ray.matrix.store.layout import FORMAT
from nncd_ray.matrix.tile_ledger import MatrixSummary, TileLedger
from nncd_ray.matrix.worker import TileWorker

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus
    from nncd_ray.matrix.store.lease import Lease
    from nncd_ray.matrix.store.matrix_store import MatrixStore
    from nncd_ray.matrix.tiling import Tile, TilePlan

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TileJob:
    """What differs between a dense and a sparse job: the tile plan (from the config, whose tile
    edge is resolved), and the store opened (created or resumed) once the scorers' fingerprint is
    known (``open_store(config, plan, fingerprint)``), and optionally the order in which the tiles
    still to do are handed out (the engine's own: largest first)."""

    plan: Callable[[MatrixConfig], TilePlan]
    open_store: Callable[[MatrixConfig, TilePlan, Mapping[str, Any]], MatrixStore]
    order: Callable[[list[Tile]], list[Tile]] | None = None


def default_tile(config: MatrixConfig, *, on_gpus: bool) -> MatrixConfig:
    """``config`` with its tile set: the one asked for (or the resumed store's), else
    ``GPU_TILE`` when the scorers run on GPUs and ``DEFAULT_TILE`` otherwise."""
    if config.tile is not None:
        return config
    return replace(config, tile=GPU_TILE if on_gpus else DEFAULT_TILE)


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


def run_tiles(
    config: MatrixConfig,
    rows: Corpus,
    cols: Corpus | None,
    lease: Lease,
    started: float,
    policy: RetryPolicy,
    job: TileJob,
) -> TileLedger:
    """Compute the tiles of ``job``'s store not marked done yet (verifying those that are) and
    return the ledger; ``started`` is the job's ``time.perf_counter()`` start."""
    if config.executor == "local":
        return _run_local(config, rows, cols, lease, started, policy, job)
    from nncd_ray.matrix.cluster.executor import RayExecutor

    with RayExecutor(config, rows, cols) as executor:
        fingerprint = executor.start()
        config = default_tile(config, on_gpus=executor.gpus_per_actor > 0)
        plan = job.plan(config)
        store = job.open_store(config, plan, fingerprint)
        ledger = TileLedger.begin(
            store, plan, executor="ray", progress=config.progress, started=started
        )
        if job.order is not None:
            ledger.todo[:] = job.order(ledger.todo)
        try:
            executor.run(ledger.todo, ledger, lease, policy)
        finally:
            ledger.close()
    return ledger


def _run_local(
    config: MatrixConfig,
    rows: Corpus,
    cols: Corpus | None,
    lease: Lease,
    started: float,
    policy: RetryPolicy,
    job: TileJob,
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
    plan = job.plan(config)
    store = job.open_store(config, plan, worker.fingerprint())
    ledger = TileLedger.begin(
        store, plan, executor="local", progress=config.progress, started=started
    )
    if job.order is not None:
        ledger.todo[:] = job.order(ledger.todo)
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


def raise_if_failed(config: MatrixConfig, summary: MatrixSummary, policy: RetryPolicy) -> None:
    """Raise :class:`TileFailed` (with the summary attached) when tiles failed or the fail-fast
    policy stopped the job."""
    if summary.tiles_failed or policy.stopped is not None:
        error = TileFailed(failure_message(config, summary, policy))
        error.summary = summary  # type: ignore[attr-defined]
        raise error


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


__all__ = [
    "TileJob",
    "default_tile",
    "failure_message",
    "job_fingerprint",
    "raise_if_failed",
    "run_tiles",
]

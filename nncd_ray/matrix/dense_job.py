"""The dense job: every pair of ``rows × cols`` (or ``rows × rows``) in the public layout of
DESIGN.md §5, run under the caller's lease (:func:`nncd_ray.matrix.engine.compute_matrix` holds it).
Also what computes a classical prefilter's matrix inside a sparse store."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nncd_ray.matrix.config import MatrixConfig
from nncd_ray.matrix.failures import RetryPolicy
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.tile_job import TileJob, job_fingerprint, run_tiles
from nncd_ray.matrix.tile_ledger import TileLedger
from nncd_ray.matrix.tiling import TilePlan

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nncd_ray.data.corpus import Corpus
    from nncd_ray.matrix.store.lease import Lease


def run_dense(
    config: MatrixConfig,
    rows: Corpus,
    cols: Corpus | None,
    lease: Lease,
    started: float,
    policy: RetryPolicy,
) -> TileLedger:
    """Compute the missing tiles of the dense job (verifying the done ones) and return the
    ledger; refuses a store computed with other settings before any worker starts."""
    options = dict(config.storage_options or {})
    if config.tile is None and not config.overwrite:
        stored = MatrixStore.existing_tile(config.store, storage_options=options)
        config = replace(config, tile=stored)  # resuming: the store's own tile
    if config.tile is not None and not config.overwrite:
        # refuse a wrong resume before starting a cluster or loading a model
        base = job_fingerprint(config, rows, cols)
        MatrixStore.check_existing(config.store, base, storage_options=options)

    def plan(resolved: MatrixConfig) -> TilePlan:
        if resolved.tile is None:
            raise ValueError("the tile edge is resolved before the tiles are planned")
        n_cols = len(rows if cols is None else cols)
        return TilePlan(n_rows=len(rows), n_cols=n_cols, tile=resolved.tile)

    def open_store(
        resolved: MatrixConfig, tiles: TilePlan, compressor: Mapping[str, Any]
    ) -> MatrixStore:
        base = job_fingerprint(resolved, rows, cols)
        return MatrixStore.create_or_resume(
            resolved.store,
            plan=tiles,
            variant=resolved.variant,
            config={**base, "compressor": dict(compressor)},
            rows=rows,
            cols=cols,
            scorer={"name": resolved.scorer.name, "options": dict(resolved.scorer.options)},
            storage_options=resolved.storage_options,
            overwrite=resolved.overwrite,
        )

    return run_tiles(
        config, rows, cols, lease, started, policy, TileJob(plan=plan, open_store=open_store)
    )


__all__ = ["run_dense"]

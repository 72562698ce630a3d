"""The matrix engine: compute a (resumable, fault-tolerant) matrix of code lengths into a store.

``compute_matrix(config, rows, cols)`` takes the store's lease, refuses a store computed with other
settings, and computes only the tiles whose completion marker is not set: on a Ray cluster
(``executor="ray"``, a pool of scorer actors, see :mod:`nncd_ray.matrix.cluster.executor`) or in
this process (``executor="local"``, same store and resume semantics, for small runs and benchmarks).

Workers write each tile's data; the driver writes the tile's marker after the worker reported
success, keeps counters, and never holds the matrix. A tile that fails ``max_attempts`` times is
recorded in the store's ``failed_tiles``; the job finishes every other tile and then raises
:class:`~nncd_ray.errors.TileFailed`.

With ``config.candidates`` the job is sparse (:mod:`nncd_ray.matrix.sparse_job`): a prefilter
chooses each query's candidates and the scorer computes only those pairs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from nncd_ray.matrix.config import MatrixConfig
from nncd_ray.matrix.dense_job import run_dense
from nncd_ray.matrix.failures import RetryPolicy
from nncd_ray.matrix.sparse_job import run_sparse
from nncd_ray.matrix.store.lease import Lease
from nncd_ray.matrix.tile_job import default_tile, failure_message, job_fingerprint, raise_if_failed
from nncd_ray.matrix.tile_ledger import MatrixSummary

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus

log = logging.getLogger(__name__)


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
        if config.candidates is not None:
            ledger, prefilter = run_sparse(config, rows, cols, lease, started, policy)
        else:
            ledger, prefilter = run_dense(config, rows, cols, lease, started, policy), None
    summary = ledger.summary()
    if prefilter is not None:
        summary = replace(summary, prefilter=prefilter)
    raise_if_failed(config, summary, policy)
    return summary


__all__ = [
    "MatrixConfig",
    "MatrixSummary",
    "compute_matrix",
    "default_tile",
    "failure_message",
    "job_fingerprint",
    "run_dense",
]

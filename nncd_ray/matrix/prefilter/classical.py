"""A classical compressor's NCD as the prefilter (``--prefilter zstd``, the default; ``gzip``,
``bz2``, ``lzma``).

Its matrix is a complete dense matrix store in the public layout of DESIGN.md §5, in the sparse
store's ``prefilter`` group, computed by the matrix engine itself: the same tiles, completion
markers, verification on resume, retries, executor and actors as the job (under the job's lease),
so a killed job resumes the prefilter too. The ranking is NCD (variant ``ncd``, x = query) from its
code lengths: smaller is nearer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import IncompleteMatrix
from nncd_ray.matrix.dense_job import run_dense
from nncd_ray.matrix.failures import RetryPolicy
from nncd_ray.matrix.prefilter.base import PrefilterJob, PrefilterSummary
from nncd_ray.matrix.store.integrity import verify_store
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.matrix.tile_job import raise_if_failed
from nncd_ray.ncd import ncd_matrix
from nncd_ray.scorers import CLASSICAL, ScorerSpec, make_scorer


class ClassicalPrefilter:
    """NCD of a classical compressor (its default settings) between queries and references."""

    def __init__(self, *, compressor: str = "zstd") -> None:
        if compressor not in CLASSICAL:
            raise ValueError(f"a classical prefilter needs one of {CLASSICAL}, not {compressor!r}")
        self.name = compressor
        self.spec = ScorerSpec(name=compressor)

    def fingerprint(self) -> dict[str, Any]:
        """The compressor's own fingerprint (library version and level), and the distance."""
        return {
            "name": self.name,
            "distance": "ncd",
            **make_scorer(self.spec).fingerprint(),
        }

    def compute(self, job: PrefilterJob) -> PrefilterSummary:
        """The compressor's dense matrix through the engine (see the module docstring)."""
        started = time.perf_counter()
        config = replace(
            job.config,
            store=job.url,
            scorer=self.spec,
            variant="ncd",
            candidates=None,
            overwrite=False,  # the sparse store was deleted as a whole when asked to
            gpus_per_actor=0,
        )
        policy = RetryPolicy(max_attempts=config.max_attempts)
        ledger = run_dense(config, job.rows, job.cols, job.lease, job.started, policy)
        raise_if_failed(config, ledger.summary(), policy)
        return PrefilterSummary(
            name=self.name,
            computed=ledger.pairs_computed,
            unit="pairs computed",
            seconds=time.perf_counter() - started,
        )

    def open(
        self, url: str, storage_options: Mapping[str, Any] | None = None
    ) -> ClassicalPrefilterReader:
        return ClassicalPrefilterReader(MatrixStore.open(url, storage_options=storage_options))


class ClassicalPrefilterReader:
    """NCD rows of a classical prefilter's dense store, read through the checked reader."""

    def __init__(self, store: MatrixStore) -> None:
        self.store = store
        self.n_rows, self.n_cols = store.plan.shape
        self._reader: StoreReader | None = None

    def complete(self) -> bool:
        return bool(self.store.done_mask().all())

    def distances(self, start: int, stop: int) -> NDArray[np.float64]:
        """``(stop - start, n_cols) float64`` NCD of queries ``[start, stop)``."""
        if self._reader is None:
            if not self.complete():
                raise IncompleteMatrix(
                    f"the prefilter store {self.store.url} is not complete; run the same "
                    "`nncd matrix` command again to finish it"
                )
            self._reader = StoreReader(self.store)
        reader = self._reader
        return ncd_matrix(
            reader.row_bits[start:stop],
            reader.col_bits,
            reader.rows("pair_bits", start, stop),
            "ncd",
        )

    def verify(self) -> list[str]:
        report = verify_store(self.store)
        return [p.describe() for p in report.problems] + [
            f"{name} {reason}" for name, reason in report.array_problems.items()
        ]


__all__ = ["ClassicalPrefilter", "ClassicalPrefilterReader"]

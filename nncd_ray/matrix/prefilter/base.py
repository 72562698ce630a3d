"""The prefilter protocol: a cheap distance between every query and every reference, computed into
the sparse store's ``prefilter`` group and read back to choose each query's candidates.

A prefilter only ranks: smaller means nearer, the scale does not matter. Its data is kept beside
the pairs (so a resumed job, ``nncd status --verify`` and ``nncd knn --compare`` can read it) and
is computed resumably: a killed job recomputes only what is missing. Its fingerprint is part of the
sparse store's: another prefilter, or the same one with other settings, is another config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus
    from nncd_ray.matrix.config import MatrixConfig
    from nncd_ray.matrix.store.lease import Lease


@dataclass(frozen=True, kw_only=True)
class PrefilterJob:
    """What a prefilter computes, and with what."""

    # where its data goes: the sparse store's ``prefilter`` group (a URL, like the store's)
    url: str
    # the sparse job's settings (executor, actors, tile edge, storage options, progress …)
    config: MatrixConfig
    # queries (rows) and references (columns), in matrix order
    rows: Corpus
    cols: Corpus
    # the sparse store's lease, held by this driver for the whole job
    lease: Lease
    # the job's time.perf_counter() start
    started: float


@dataclass(frozen=True, kw_only=True)
class PrefilterSummary:
    """What one prefilter phase did."""

    name: str
    # what this run computed, in ``unit`` ("pairs computed" for a classical prefilter,
    # "documents embedded" for embeddings)
    computed: int
    unit: str
    seconds: float
    # the scorer's hub probe (nncd_ray.matrix.hubs.run_hub_probe) when this run made it
    hub_probe: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "computed": self.computed,
            "unit": self.unit,
            "seconds": self.seconds,
            "hub_probe": self.hub_probe,
            "work": (
                f"{self.computed:,} {self.unit} in {self.seconds:.1f} s"
                if self.computed
                else "nothing left to compute"
            ),
        }


class PrefilterReader(Protocol):
    """A prefilter's data in a store, read back with every value checked."""

    # queries and references
    n_rows: int
    n_cols: int

    def complete(self) -> bool:
        """Whether every part of the data is computed."""
        ...

    def distances(self, start: int, stop: int) -> NDArray[np.float64]:
        """``(stop - start, n_cols) float64`` distances of queries ``[start, stop)`` to every
        reference (smaller is nearer; finite). A bad chunk raises
        :class:`~nncd_ray.errors.CorruptTile`."""
        ...

    def verify(self) -> list[str]:
        """One line per problem found reading every computed part (empty when all is good)."""
        ...


class Prefilter(Protocol):
    """What ranks the references for each query (see the module docstring)."""

    # the --prefilter name
    name: str

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description of everything that changes the ranking (without loading a
        model); ``name`` among its keys."""
        ...

    def compute(self, job: PrefilterJob) -> PrefilterSummary:
        """Compute what is missing of the data into ``job.url`` (recomputing parts that fail
        verification); raises :class:`~nncd_ray.errors.TileFailed` when parts cannot be
        computed."""
        ...

    def open(self, url: str, storage_options: Mapping[str, Any] | None = None) -> PrefilterReader:
        """The data at ``url`` for reading."""
        ...


__all__ = ["Prefilter", "PrefilterJob", "PrefilterReader", "PrefilterSummary"]

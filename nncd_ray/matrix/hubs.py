"""Hub candidates for candidate pruning (``nncd matrix --candidates M --hubs H``).

A cheap prefilter ranks references by its own notion of nearness, but a scorer can have *hubs*:
references near to almost every query under its own NCD (the embedded model on agnews-medium:
one reference is the exact nearest neighbour of 850 of the 1,000 queries), which no other
compressor or embedding sees. Pruning then loses the exact neighbours (recall@1 0.18 at M = 40
with zstd) and, with them, the dense store's answer.

The probe finds them with the scorer itself: S sample queries (evenly spaced rows) against every
reference, a small dense store in the public layout inside the sparse store (``hubs/``), computed
like any matrix (tiles, markers, resume); the H references that are most often the exact nearest
neighbour of a sample query (ties: most often among the 7 nearest, then the lower column) join
every query's candidates first, and the prefilter's order fills the other M − H places. The probe
costs S × references pairs.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.data.corpus import Corpus
from nncd_ray.matrix.dense_job import run_dense
from nncd_ray.matrix.failures import RetryPolicy
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.matrix.tile_job import raise_if_failed
from nncd_ray.ncd import ncd_matrix

if TYPE_CHECKING:
    from nncd_ray.matrix.config import MatrixConfig
    from nncd_ray.matrix.store.lease import Lease

# the group inside a sparse store that holds the probe's dense store
HUBS_GROUP = "hubs"
# neighbours per sample query that break ties between hubs of equal nearest-neighbour counts
TIE_NEIGHBOURS = 7


def hubs_url(url: str) -> str:
    return f"{url.rstrip('/')}/{HUBS_GROUP}"


def sample_rows(n_rows: int, sample: int) -> list[int]:
    """``sample`` evenly spaced row numbers of ``n_rows`` (all of them when sample ≥ n_rows)."""
    return sorted({int(i) for i in np.linspace(0, n_rows - 1, min(sample, n_rows)).round()})


def hub_fingerprint(hubs: int, sample: int) -> dict[str, Any]:
    """What changes the hubs (part of a sparse store's config when ``hubs`` > 0)."""
    return {
        "hubs": hubs,
        "sample_queries": sample,
        "rule": f"most often the exact 1-NN of a sample query, then among its {TIE_NEIGHBOURS}",
    }


def choose_hubs(distances: NDArray[Any], hubs: int) -> NDArray[np.int64]:
    """The ``hubs`` references most often the nearest neighbour of a row of ``distances``
    (``(sample queries, references)``, the scorer's NCD; ties: most often among the
    :data:`TIE_NEIGHBOURS` nearest, then the lower column), never one that is no sample query's
    neighbour at all."""
    values = np.where(np.isnan(distances), np.inf, np.asarray(distances, dtype=np.float64))
    order = np.argsort(values, axis=1, kind="stable")
    n_refs = values.shape[1]
    nearest = np.bincount(order[:, 0], minlength=n_refs)
    near = np.bincount(order[:, :TIE_NEIGHBOURS].ravel(), minlength=n_refs)
    ranked = np.lexsort((np.arange(n_refs), -near, -nearest))
    return np.asarray([c for c in ranked[:hubs] if near[c] > 0], dtype=np.int64)


def hubs_first(distances: NDArray[Any], hubs: NDArray[np.int64]) -> NDArray[np.float64]:
    """Prefilter distances with the hubs made nearest of all, in their order (the first hub
    nearest), so that a stable sort puts them first and the prefilter's order after them."""
    out = np.array(distances, dtype=np.float64)
    out[:, hubs] = -1e300 + 1e290 * np.arange(len(hubs))
    return out


def run_hub_probe(
    config: MatrixConfig,
    rows: Corpus,
    refs: Corpus,
    lease: Lease,
    started: float,
) -> tuple[NDArray[np.int64], dict[str, Any]]:
    """Compute (or resume) the probe's dense store with the job's scorer and choose the hubs;
    returns them and what the probe did."""
    chosen = sample_rows(len(rows), config.hub_sample)
    sample = Corpus.from_texts(
        [rows.texts[i] for i in chosen],
        ids=[rows.ids[i] for i in chosen],
        labels=None if rows.labels is None else [rows.labels[i] for i in chosen],
    )
    url = hubs_url(config.store)
    probe = replace(config, store=url, candidates=None, overwrite=False)
    policy = RetryPolicy(max_attempts=probe.max_attempts)
    begun = time.perf_counter()
    ledger = run_dense(probe, sample, refs, lease, started, policy)
    summary = ledger.summary()
    raise_if_failed(probe, summary, policy)
    reader = StoreReader(MatrixStore.open(url, storage_options=config.storage_options))
    distances = ncd_matrix(
        reader.row_bits,
        reader.col_bits,
        reader.rows("pair_bits", 0, len(sample)),
        config.variant,
        pair_bits_reversed=(
            reader.rows("pair_bits_reversed", 0, len(sample))
            if config.variant == "ncd-min"
            else None
        ),
    )
    hubs = choose_hubs(distances, config.hubs)
    return hubs, {
        "sample_rows": chosen,
        "pairs": len(chosen) * len(refs),
        "computed": summary.pairs_computed,
        "seconds": time.perf_counter() - begun,
        "columns": [int(c) for c in hubs],
        "ids": [refs.ids[int(c)] for c in hubs],
    }


__all__ = [
    "HUBS_GROUP",
    "choose_hubs",
    "hub_fingerprint",
    "hubs_first",
    "hubs_url",
    "run_hub_probe",
    "sample_rows",
]

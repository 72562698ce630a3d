"""What candidate pruning costs in neighbours and accuracy: a pruned (sparse) store against a dense
store of the same documents (``nncd knn --store PRUNED --compare DENSE``), and the curve over M.

- **Recall@k**: the share of each query's exact k nearest neighbours (the dense store's, under
  PROTOCOL.md's order: distance, then reference index) that are among its candidates, averaged
  over the queries.
- **Accuracy** of both stores, each through :func:`~nncd_ray.knn.evaluate.evaluate_store` (the
  pruned one finds neighbours among its candidates), and how many queries' predictions differ.
- **Pairs**: what the scorer computed in each (queries × M, against queries × references).
- **The curve** (``curve``): for other values M', what pruning would give, derived from the dense
  store and the pruned store's own prefilter data: the candidates of M' are the prefilter's M'
  nearest (the first M' of an M job's, when M' ≤ M), and k-NN runs on the dense NCD restricted to
  them. A pruned store holds the dense store's values at its candidates (to the scorer's
  batch-shape rounding: exactly for classical compressors, ~5e-5 bits for an LM in float32), so
  the row at M itself checks the derivation against the real pruned run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import ConfigError, IncompleteMatrix, InputError
from nncd_ray.knn.candidate_rows import CandidateRows
from nncd_ray.knn.evaluate import EvaluationConfig, NCDRows, evaluate_store
from nncd_ray.knn.labels import LabelCodec
from nncd_ray.knn.neighbours import check_ks, top_k_neighbours, vote_neighbours
from nncd_ray.matrix.hubs import HUBS_GROUP, hubs_first
from nncd_ray.matrix.prefilter import make_prefilter
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.matrix.store.sparse import prefilter_url
from nncd_ray.matrix.store.storage_errors import store_errors

# rows of the dense matrix handled at once (each block: a few (rows, references) float64 arrays)
BLOCK_ROWS = 256


@dataclass(frozen=True, kw_only=True)
class PruningPoint:
    """Pruning to M candidates per query: recall of the exact neighbours and accuracy, per k."""

    candidates: int
    recall: dict[int, float]
    accuracy: dict[int, float]
    # pairs the scorer computes: queries × M
    pairs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "recall": {str(k): v for k, v in self.recall.items()},
            "accuracy": {str(k): v for k, v in self.accuracy.items()},
            "pairs": self.pairs,
        }


@dataclass(frozen=True, kw_only=True)
class PruningCurve:
    """The dense store's accuracy and one :class:`PruningPoint` per M (derived, see the module
    docstring)."""

    n_queries: int
    n_refs: int
    ks: tuple[int, ...]
    dense_accuracy: dict[int, float]
    points: tuple[PruningPoint, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_queries": self.n_queries,
            "n_refs": self.n_refs,
            "ks": list(self.ks),
            "dense_accuracy": {str(k): v for k, v in self.dense_accuracy.items()},
            "points": [p.to_dict() for p in self.points],
        }

    def markdown_table(self, title: str = "M") -> list[str]:
        ks = self.ks
        lines = [
            f"| {title} | share of pairs | "
            + " | ".join(f"recall@{k}" for k in ks)
            + " | "
            + " | ".join(f"acc k={k}" for k in ks)
            + " |",
            "|---:|---:|" + "---:|" * (2 * len(ks)),
            f"| all ({self.n_refs}) | 100% | "
            + " | ".join("1.000" for _ in ks)
            + " | "
            + " | ".join(f"{self.dense_accuracy[k]:.3f}" for k in ks)
            + " |",
        ]
        total = self.n_queries * self.n_refs
        for point in self.points:
            lines.append(
                f"| {point.candidates} | {100.0 * point.pairs / total:.1f}% | "
                + " | ".join(f"{point.recall[k]:.3f}" for k in ks)
                + " | "
                + " | ".join(f"{point.accuracy[k]:.3f}" for k in ks)
                + " |"
            )
        return lines


def _ranks(distances: NDArray[np.float64]) -> NDArray[np.int64]:
    """``(rows, refs)``: each reference's place in its row's prefilter order (0 = nearest; equal
    distances in column order), so that ``rank < M`` marks an M job's candidates."""
    order = np.argsort(distances, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :], axis=1)
    return ranks


def pruning_curve(
    exact: NCDRows,
    prefilter_distances: Callable[[int, int], NDArray[np.float64]],
    candidates: Sequence[int],
    ks: Sequence[int],
) -> PruningCurve:
    """Recall and accuracy of pruning the dense store ``exact`` (complete, rectangular) to each
    M of ``candidates``, with the candidates ranked by ``prefilter_distances(start, stop)``
    (``(rows, references)``, smaller is nearer)."""
    reader = exact.reader
    if reader.square:
        raise ConfigError("pruning is for queries × references stores, not square ones")
    if not reader.tiles_done.all():
        raise IncompleteMatrix(f"the dense store {reader.url} is not complete")
    n_rows, n_refs = reader.n_rows, reader.n_cols
    ms = sorted({int(m) for m in candidates})
    if not ms or ms[0] < 1 or ms[-1] > n_refs:
        raise ConfigError(f"candidates per query must lie in 1..{n_refs}, not {ms}")
    ks = check_ks(ks, ms[0])
    reference_labels = reader.document_values("col_labels")
    query_labels = reader.document_values("row_labels")
    codec = LabelCodec.from_labels(reference_labels, query_labels)
    reference_codes = codec.encode(reference_labels)
    true = codec.encode(query_labels)
    largest = ks[-1]
    hits = {m: dict.fromkeys(ks, 0) for m in ms}
    correct = {m: dict.fromkeys(ks, 0) for m in ms}
    dense_correct = dict.fromkeys(ks, 0)
    for start in range(0, n_rows, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n_rows)
        distances = exact.distances(start, stop)
        nearest, _ = top_k_neighbours(distances, largest)
        for k, codes in vote_neighbours(nearest, reference_codes, ks, len(codec)).items():
            dense_correct[k] += int((codes == true[start:stop]).sum())
        ranks = _ranks(np.asarray(prefilter_distances(start, stop), dtype=np.float64))
        for m in ms:
            chosen = ranks < m
            inside = np.take_along_axis(chosen, np.maximum(nearest, 0), axis=1) & (nearest >= 0)
            for k in ks:
                hits[m][k] += int(inside[:, :k].sum())
            pruned, _ = top_k_neighbours(np.where(chosen, distances, np.nan), largest)
            for k, codes in vote_neighbours(pruned, reference_codes, ks, len(codec)).items():
                correct[m][k] += int((codes == true[start:stop]).sum())
    return PruningCurve(
        n_queries=n_rows,
        n_refs=n_refs,
        ks=ks,
        dense_accuracy={k: dense_correct[k] / n_rows for k in ks},
        points=tuple(
            PruningPoint(
                candidates=m,
                recall={k: hits[m][k] / (k * n_rows) for k in ks},
                accuracy={k: correct[m][k] / n_rows for k in ks},
                pairs=m * n_rows,
            )
            for m in ms
        ),
    )


@dataclass(frozen=True, kw_only=True)
class PruningComparison:
    """``nncd knn --compare``: a pruned store against the dense store of the same documents."""

    pruned: str
    dense: str
    prefilter: dict[str, Any]
    compressor: dict[str, Any] | None
    candidates: int
    n_queries: int
    n_refs: int
    ks: tuple[int, ...]
    # recall@k of the stored candidates, and each store's accuracy per k
    recall: dict[int, float]
    accuracy_dense: dict[int, float]
    accuracy_pruned: dict[int, float]
    # queries whose prediction differs between the stores, per k
    predictions_differ: dict[int, int]
    # pair code lengths the scorer computed (C(yx) included for ncd-min; the hub probe's too)
    pairs_pruned: int
    pairs_dense: int
    # hub references added to every query's candidates (nncd_ray.matrix.hubs)
    hubs: int = 0
    curve: PruningCurve | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pruned": self.pruned,
            "dense": self.dense,
            "prefilter": self.prefilter,
            "compressor": self.compressor,
            "candidates": self.candidates,
            "n_queries": self.n_queries,
            "n_refs": self.n_refs,
            "ks": list(self.ks),
            "recall": {str(k): v for k, v in self.recall.items()},
            "accuracy_dense": {str(k): v for k, v in self.accuracy_dense.items()},
            "accuracy_pruned": {str(k): v for k, v in self.accuracy_pruned.items()},
            "predictions_differ": {str(k): v for k, v in self.predictions_differ.items()},
            "pairs_pruned": self.pairs_pruned,
            "pairs_dense": self.pairs_dense,
            "hubs": self.hubs,
            "share_of_pairs": self.pairs_pruned / self.pairs_dense,
            "curve": None if self.curve is None else self.curve.to_dict(),
        }

    def to_markdown(self) -> str:
        ks = self.ks
        name = self.prefilter.get("name", "?")
        lines = [
            f"# Pruned {self.pruned} against dense {self.dense}",
            "",
            f"- {self.n_queries} queries × {self.n_refs} references; {self.candidates} candidates "
            f"per query chosen by prefilter {name}"
            + (
                f", {self.hubs} of them the scorer's hubs (probe included below)"
                if self.hubs
                else ""
            ),
            f"- pairs the scorer computed: {self.pairs_pruned:,} of {self.pairs_dense:,} "
            f"({100.0 * self.pairs_pruned / self.pairs_dense:.1f}%)",
            "- recall@k: share of each query's exact k nearest neighbours (the dense store's, "
            "by distance then reference index) among its candidates",
            "",
            "| | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|---|" + "---:|" * len(ks),
            "| recall@k | " + " | ".join(f"{self.recall[k]:.3f}" for k in ks) + " |",
            "| accuracy, dense | " + " | ".join(f"{self.accuracy_dense[k]:.3f}" for k in ks) + " |",
            "| accuracy, pruned | "
            + " | ".join(f"{self.accuracy_pruned[k]:.3f}" for k in ks)
            + " |",
            "| pruned − dense | "
            + " | ".join(f"{self.accuracy_pruned[k] - self.accuracy_dense[k]:+.3f}" for k in ks)
            + " |",
            "| predictions that differ | "
            + " | ".join(str(self.predictions_differ[k]) for k in ks)
            + " |",
        ]
        if self.curve is not None:
            lines += [
                "",
                f"## Over M (prefilter {name}"
                + (f", the {self.hubs} hubs first" if self.hubs else "")
                + "; derived from the dense store: k-NN on its NCD among each query's M "
                "candidates; share of pairs: queries × M"
                + (", the probe's not included" if self.hubs else "")
                + ")",
                "",
                *self.curve.markdown_table(),
            ]
        return "\n".join(lines) + "\n"


def _check_pair(pruned: MatrixStore, dense: MatrixStore) -> None:
    if not pruned.sparse:
        raise ConfigError(f"{pruned.url} is a dense store; --compare needs a pruned (sparse) one")
    if dense.sparse or dense.square:
        raise ConfigError(
            f"{dense.url} is not a dense queries × references store; compare against the dense "
            "store of the same documents"
        )
    for key in ("rows", "cols"):
        if pruned.config.get(key) != dense.config.get(key):
            raise InputError(
                f"{pruned.url} and {dense.url} hold other {key} documents "
                f"({pruned.config.get(key)} against {dense.config.get(key)}); compare stores "
                "of the same documents"
            )


def compare_stores(
    pruned_url: str,
    dense_url: str,
    *,
    ks: Sequence[int] = (1, 3, 5, 7),
    curve: Sequence[int] = (),
    variant: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> PruningComparison:
    """Compare a complete pruned store with the complete dense store of the same documents (see
    the module docstring); ``curve``: the values of M to derive recall and accuracy for."""
    with store_errors(pruned_url):
        pruned = MatrixStore.open(pruned_url, storage_options=storage_options)
        dense = MatrixStore.open(dense_url, storage_options=storage_options)
        _check_pair(pruned, dense)
        chosen = variant or pruned.variant
        exact = NCDRows(StoreReader(dense), chosen)
        sparse = CandidateRows(StoreReader(pruned), chosen)
        ks = check_ks(ks, sparse.n_candidates)
        reports = {
            name: evaluate_store(
                EvaluationConfig(store=url, ks=ks, variant=chosen, storage_options=storage_options)
            )
            for name, url in (("dense", dense_url), ("pruned", pruned_url))
        }
        recall = _recall(exact, sparse, ks)
        prefilter = dict(pruned.attrs.get("prefilter") or {})
        probe = pruned.attrs.get(HUBS_GROUP)
        hubs = np.asarray(probe["columns"] if isinstance(probe, dict) else [], dtype=np.int64)
        derived = None
        if curve:
            reader = make_prefilter(str(prefilter.get("name"))).open(
                prefilter_url(pruned_url), storage_options
            )
            derived = pruning_curve(
                exact,
                lambda start, stop: hubs_first(reader.distances(start, stop), hubs),
                curve,
                ks,
            )
    accuracy = {name: {m.k: m.accuracy for m in report.results} for name, report in reports.items()}
    differ = {
        k: sum(
            a != b
            for a, b in zip(
                reports["dense"].predictions[k], reports["pruned"].predictions[k], strict=True
            )
        )
        for k in ks
    }
    per_pair = 2 if pruned.has_reversed else 1
    compressor = pruned.config.get("compressor")
    return PruningComparison(
        pruned=pruned_url,
        dense=dense_url,
        prefilter=prefilter,
        compressor=compressor if isinstance(compressor, dict) else None,
        candidates=sparse.n_candidates,
        n_queries=pruned.plan.n_rows,
        n_refs=pruned.n_refs,
        ks=ks,
        recall=recall,
        accuracy_dense=accuracy["dense"],
        accuracy_pruned=accuracy["pruned"],
        predictions_differ=differ,
        pairs_pruned=pruned.plan.n_pairs * per_pair
        + (int(probe["pairs"]) * per_pair if isinstance(probe, dict) else 0),
        hubs=len(hubs),
        pairs_dense=dense.plan.n_pairs * (2 if dense.has_reversed else 1),
        curve=derived,
    )


def _recall(exact: NCDRows, sparse: CandidateRows, ks: tuple[int, ...]) -> dict[int, float]:
    """Recall@k of the stored candidates against the dense store's exact neighbours."""
    n_rows = exact.reader.n_rows
    hits = dict.fromkeys(ks, 0)
    for start in range(0, n_rows, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n_rows)
        nearest, _ = top_k_neighbours(exact.distances(start, stop), ks[-1])
        candidates = sparse.candidates(start, stop)
        inside = (nearest[:, :, None] == candidates[:, None, :]).any(axis=2)
        for k in ks:
            hits[k] += int(inside[:, :k].sum())
    return {k: hits[k] / (k * n_rows) for k in ks}


__all__ = [
    "PruningComparison",
    "PruningCurve",
    "PruningPoint",
    "compare_stores",
    "pruning_curve",
]

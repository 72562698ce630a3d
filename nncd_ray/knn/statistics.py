"""How good and how sure a k-NN result is: accuracy, macro-F1 and the confusion matrix, the Wilson
interval, the exact McNemar test of two classifiers on the same queries, and hubness. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nncd_ray.errors import InputError
from nncd_ray.knn.labels import LabelCodec

# the two-sided 95% quantile of the standard normal
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927): unlike p ± z·SE it stays
    inside [0, 1] and keeps its coverage near 0 and 1 and for the few hundred queries of a
    benchmark split. ``(nan, nan)`` when ``n`` is 0."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes <= 0 else max(0.0, float(centre - half))
    high = 1.0 if successes >= n else min(1.0, float(centre + half))
    return (low, high)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value for two classifiers scored on the same queries
    (Dietterich 1998): ``only_first`` queries right by the first only, ``only_second`` by the
    second only; under "equally accurate" each such query is a fair coin. 1.0 when none differ."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True, kw_only=True)
class PairedComparison:
    """Two classifiers on the same queries at one ``k``: who was right where the other was not."""

    k: int
    n_queries: int
    both_right: int
    only_this: int
    only_baseline: int
    p_value: float

    @classmethod
    def of(
        cls, k: int, true: Sequence[object], this: Sequence[object], baseline: Sequence[object]
    ) -> PairedComparison:
        if not len(true) == len(this) == len(baseline):
            raise InputError("paired comparison needs the same queries on both sides")
        right = [t == a for t, a in zip(true, this, strict=True)]
        right_baseline = [t == b for t, b in zip(true, baseline, strict=True)]
        pairs = list(zip(right, right_baseline, strict=True))
        only_this = sum(1 for a, b in pairs if a and not b)
        only_baseline = sum(1 for a, b in pairs if b and not a)
        return cls(
            k=k,
            n_queries=len(true),
            both_right=sum(1 for a, b in pairs if a and b),
            only_this=only_this,
            only_baseline=only_baseline,
            p_value=mcnemar_exact(only_this, only_baseline),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "k": self.k,
            "n_queries": self.n_queries,
            "both_right": self.both_right,
            "only_this": self.only_this,
            "only_baseline": self.only_baseline,
            "p_value": self.p_value,
        }


@dataclass(frozen=True, kw_only=True)
class Hubness:
    """How unevenly the references serve as neighbours, for one ``k`` (Radovanović, Nanopoulos &
    Ivanović 2010, "Hubs in space"). ``counts[j]`` = N_k(j), the number of queries with reference
    ``j`` among their ``k`` nearest. A few references that are near to everything ("hubs") take
    most predictions whatever the query's class; ``skewness`` of N_k (0 for an even spread, large
    and positive with hubs) is the usual summary. ``top``: ``(reference column, N_k)`` of the most
    used references, most used first (ties by column)."""

    k: int
    n_queries: int
    n_refs: int
    skewness: float
    max_count: int
    # references in no query's k nearest ("anti-hubs")
    never: int
    top: tuple[tuple[int, int], ...]

    @classmethod
    def from_counts(cls, counts: ArrayLike, k: int, n_queries: int, top: int = 5) -> Hubness:
        values = np.asarray(counts, dtype=np.int64)
        n_refs = int(values.shape[0])
        spread = values.astype(np.float64) - values.mean() if n_refs else values.astype(float)
        sigma = float(np.sqrt(np.mean(spread**2))) if n_refs else 0.0
        skewness = float(np.mean(spread**3)) / sigma**3 if sigma > 0 else 0.0
        order = np.lexsort((np.arange(n_refs), -values))[: min(top, n_refs)]
        return cls(
            k=k,
            n_queries=n_queries,
            n_refs=n_refs,
            skewness=skewness,
            max_count=int(values.max()) if n_refs else 0,
            never=int(np.count_nonzero(values == 0)),
            top=tuple((int(j), int(values[j])) for j in order if values[j] > 0),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "k": self.k,
            "n_queries": self.n_queries,
            "n_refs": self.n_refs,
            "skewness": self.skewness,
            "max_count": self.max_count,
            "never": self.never,
            "top": [{"col": col, "count": count} for col, count in self.top],
        }


def confusion_matrix(
    true_codes: ArrayLike, predicted_codes: ArrayLike, n_classes: int
) -> NDArray[np.int64]:
    """``(n_classes, n_classes) int64``: rows true, columns predicted; :data:`NO_LABEL` left out."""
    true = np.asarray(true_codes, dtype=np.int64)
    predicted = np.asarray(predicted_codes, dtype=np.int64)
    keep = (true >= 0) & (predicted >= 0)
    flat = true[keep] * n_classes + predicted[keep]
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def macro_f1(true_codes: ArrayLike, predicted_codes: ArrayLike, n_classes: int) -> float:
    """Unweighted mean F1 over the classes present among true or predicted codes."""
    true = np.asarray(true_codes, dtype=np.int64)
    predicted = np.asarray(predicted_codes, dtype=np.int64)
    confusion = confusion_matrix(true, predicted, n_classes).astype(np.float64)
    true_positive = np.diag(confusion)
    n_true = np.bincount(true[true >= 0], minlength=n_classes).astype(np.float64)
    n_predicted = confusion.sum(axis=0)
    present = (n_true > 0) | (n_predicted > 0)
    if not present.any():
        return 0.0
    # F1 = 2 TP / (|true| + |predicted|): the same as 2PR/(P+R), and 0 where both are 0
    denominator = n_true + n_predicted
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(n_classes), where=denominator > 0)
    return float(f1[present].mean())


def score_predictions(
    true_codes: ArrayLike, predicted_codes: ArrayLike, codec: LabelCodec, k: int
) -> KNNMetrics:
    """Accuracy, macro-F1 and confusion matrix of one ``k`` (true codes must all be labels)."""
    true = np.asarray(true_codes, dtype=np.int64)
    predicted = np.asarray(predicted_codes, dtype=np.int64)
    n = int(true.shape[0])
    correct = int(np.count_nonzero(true == predicted))
    confusion = confusion_matrix(true, predicted, len(codec))
    return KNNMetrics(
        k=k,
        accuracy=correct / n if n else float("nan"),
        macro_f1=macro_f1(true, predicted, len(codec)) if n else float("nan"),
        n_queries=n,
        n_correct=correct,
        n_unpredicted=int(np.count_nonzero(predicted < 0)),
        labels=codec.labels,
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
    )


@dataclass(frozen=True, kw_only=True)
class KNNMetrics:
    """Scores of one ``k`` over the queries that have a true label.

    ``confusion[i][j]``: queries of true label ``labels[i]`` predicted as ``labels[j]``;
    ``n_unpredicted``: queries without any usable neighbour (counted wrong, not in ``confusion``).
    ``macro_f1``: mean F1 over the labels that occur among true or predicted labels (scikit-learn's
    ``f1_score(average="macro")``; F1 is 0 where precision + recall is 0).
    """

    k: int
    accuracy: float
    macro_f1: float
    n_queries: int
    n_correct: int
    n_unpredicted: int
    labels: tuple[Hashable, ...]
    confusion: tuple[tuple[int, ...], ...]

    @property
    def accuracy_interval(self) -> tuple[float, float]:
        """95% Wilson score interval of the accuracy (NaN, NaN without queries)."""
        return wilson_interval(self.n_correct, self.n_queries)

    def to_dict(self) -> dict[str, object]:
        low, high = self.accuracy_interval
        return {
            "k": self.k,
            "accuracy": self.accuracy,
            "accuracy_95ci": [low, high],
            "macro_f1": self.macro_f1,
            "n_queries": self.n_queries,
            "n_correct": self.n_correct,
            "n_unpredicted": self.n_unpredicted,
            "labels": list(self.labels),
            "confusion": [list(row) for row in self.confusion],
        }

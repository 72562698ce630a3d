"""k-nearest-neighbour classification over a block of distances: pure numpy.

The rule (``shared/bench/PROTOCOL.md``), exactly:

- neighbours of a query are the references in ascending order of ``(distance, reference index)``;
  the order is total, so equal distances are resolved by the lower reference index;
- a NaN distance is never a neighbour (a cell not computed, or the diagonal in leave-one-out);
- the prediction is the majority label of the first ``k`` neighbours; a tie between classes goes to
  the tied class whose nearest member comes first in that order. Never "top-2" (counting a query
  correct when any tied class is right).

Top-k uses a partial sort (:func:`numpy.argpartition`, O(n) per row) for the largest ``k`` once;
only the ``k`` chosen are then ordered, and every smaller ``k`` reuses the same neighbours. The
rare rows where equal distances straddle the k-th place are redone exactly with a stable sort of the
tied candidates, so that the result never depends on argpartition's internal order.

Labels are handled as integer codes into a fixed label order (:class:`LabelCodec`); ``-1`` marks "no
neighbour" / "no prediction" (a query whose every distance is NaN).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nncd_ray.errors import ConfigError, InputError

# a code that is not a class: no neighbour, or no prediction
NO_LABEL = -1


def _label_sort_key(label: Hashable) -> tuple[int, float, str]:
    """Numbers first in numeric order, then everything else by its string (ints and strs never mix
    in one input, but the order must be total anyway)."""
    if isinstance(label, bool | int | float | np.integer | np.floating):
        return (0, float(label), "")
    return (1, 0.0, str(label))


def _plain(label: object) -> Hashable:
    """numpy scalars -> Python ``int``/``float``/``str`` (JSON-able, hashable, comparable)."""
    if isinstance(label, np.generic):
        value = label.item()
        return value if isinstance(value, Hashable) else str(value)
    if isinstance(label, Hashable):
        return label
    raise InputError(f"label {label!r} is not hashable")


@dataclass(frozen=True, kw_only=True)
class LabelCodec:
    """A fixed label order; ``codes`` maps labels to ``0..n-1`` in that order."""

    labels: tuple[Hashable, ...]

    @classmethod
    def from_labels(cls, *label_sets: Iterable[object]) -> LabelCodec:
        """The sorted union of the labels given (numbers numerically, strings lexicographically)."""
        seen = {_plain(label) for labels in label_sets for label in labels}
        return cls(labels=tuple(sorted(seen, key=_label_sort_key)))

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, labels: Iterable[object]) -> NDArray[np.int64]:
        """``(n,) int64`` codes; a label outside the order is an :class:`InputError`."""
        index = {label: code for code, label in enumerate(self.labels)}
        out: list[int] = []
        for label in labels:
            try:
                out.append(index[_plain(label)])
            except KeyError:
                raise InputError(f"label {label!r} is not one of {list(self.labels)}") from None
        return np.asarray(out, dtype=np.int64).reshape(len(out))

    def decode(self, codes: ArrayLike) -> list[Hashable | None]:
        """Labels of ``codes``; :data:`NO_LABEL` becomes ``None``."""
        return [None if int(c) < 0 else self.labels[int(c)] for c in np.asarray(codes).ravel()]


def check_ks(ks: Iterable[int], n_candidates: int | None = None) -> tuple[int, ...]:
    """Validated, sorted, de-duplicated ``k`` values; each must be at least 1 and at most the number
    of candidate neighbours (references, minus one in leave-one-out) when that is given."""
    values: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or int(k) < 1:
            raise ConfigError(f"k must be a positive integer, not {k!r}")
        values.append(int(k))
    if not values:
        raise ConfigError("give at least one k")
    out = tuple(sorted(set(values)))
    if n_candidates is not None and out[-1] > n_candidates:
        raise ConfigError(
            f"k={out[-1]} needs at least {out[-1]} candidate neighbours, but each query has only "
            f"{n_candidates}; choose a smaller k"
        )
    return out


def mask_own_cells(block: NDArray[np.float64], diagonal_offset: int | None) -> NDArray[np.float64]:
    """Set each query's own cell ``(b, diagonal_offset + b)`` of a row block of a square
    self-matrix to NaN, in place (leave-one-out); nothing when ``diagonal_offset`` is None."""
    if diagonal_offset is not None:
        rows = np.arange(block.shape[0])
        cols = rows + diagonal_offset
        inside = (cols >= 0) & (cols < block.shape[1])
        block[rows[inside], cols[inside]] = np.nan
    return block


def _neighbours(
    distances: ArrayLike,
    reference_codes: NDArray[np.int64],
    k: int,
    *,
    diagonal_offset: int | None,
    overwrite_input: bool,
) -> NDArray[np.int64]:
    """:func:`top_k_neighbours` indices, after checking there is one label per column."""
    n_columns = np.shape(distances)[-1]
    if reference_codes.shape[0] != n_columns:
        raise InputError(
            f"{reference_codes.shape[0]} reference labels for {n_columns} reference columns"
        )
    indices, _ = top_k_neighbours(
        distances, k, diagonal_offset=diagonal_offset, overwrite_input=overwrite_input
    )
    return indices


def top_k_neighbours(
    distances: ArrayLike,
    k: int,
    *,
    diagonal_offset: int | None = None,
    overwrite_input: bool = False,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The ``k`` nearest references of every query, in ``(distance, reference index)`` order.

    ``distances``: ``(B, n_refs)`` (any float dtype; NaN = never a neighbour). ``diagonal_offset``:
    for a row block of a square self-matrix, the global index of the block's first row; the cell
    ``(b, diagonal_offset + b)`` (the query itself) is then excluded (leave-one-out).

    Returns ``(indices (B, k) int64, distances (B, k) float64)``; where a row has fewer than ``k``
    usable references the tail holds ``-1`` and NaN. ``overwrite_input``: a float64 array given
    may be used as scratch space (saves one copy of the block; its contents are then undefined).
    """
    given = np.asarray(distances)
    reuse = overwrite_input and given.dtype == np.float64 and given.ndim == 2
    work = given if reuse and given.flags.writeable else np.array(given, np.float64, ndmin=2)
    if work.ndim != 2:
        raise InputError(f"distances must be a (queries, references) matrix, not {work.shape}")
    n_rows, n_refs = work.shape
    if k < 1:
        raise ConfigError(f"k must be a positive integer, not {k}")
    mask_own_cells(work, diagonal_offset)
    invalid = np.isnan(work)
    # NaN sorts last (after +inf, which stays a legitimate if useless distance): use +inf as the
    # partition key and the invalid flag as a secondary key wherever that matters
    work[invalid] = np.inf
    take = min(k, n_refs)
    out_index = np.full((n_rows, k), -1, dtype=np.int64)
    out_dist = np.full((n_rows, k), np.nan, dtype=np.float64)
    if n_rows == 0 or n_refs == 0:
        return out_index, out_dist

    if take < n_refs:
        chosen = np.argpartition(work, take - 1, axis=1)[:, :take]
    else:
        chosen = np.broadcast_to(np.arange(n_refs), (n_rows, n_refs)).copy()
    chosen_dist = np.take_along_axis(work, chosen, axis=1)
    kth = chosen_dist.max(axis=1)
    # exact unless values equal to the k-th straddle the cut (NaN-as-inf included)
    n_at_most = np.count_nonzero(work <= kth[:, None], axis=1)
    ambiguous = n_at_most > take

    chosen_invalid = np.take_along_axis(invalid, chosen, axis=1)
    order = np.lexsort((chosen, chosen_invalid, chosen_dist), axis=1)
    chosen = np.take_along_axis(chosen, order, axis=1)
    for row in np.flatnonzero(ambiguous):
        candidates = np.flatnonzero(work[row] <= kth[row])
        ranking = np.lexsort((candidates, invalid[row, candidates], work[row, candidates]))
        chosen[row] = candidates[ranking[:take]]

    usable = ~np.take_along_axis(invalid, chosen, axis=1)
    out_index[:, :take] = np.where(usable, chosen, -1)
    out_dist[:, :take] = np.where(usable, np.take_along_axis(work, chosen, axis=1), np.nan)
    return out_index, out_dist


def vote(neighbour_codes: ArrayLike, n_classes: int) -> NDArray[np.int64]:
    """Majority label of each row of neighbours given nearest first.

    ``neighbour_codes``: ``(B, k)`` int class codes in neighbour order, :data:`NO_LABEL` for a
    missing neighbour. Ties between classes go to the class whose first member comes earliest.
    Returns ``(B,) int64`` codes (:data:`NO_LABEL` for a row without any neighbour).
    """
    codes = np.asarray(neighbour_codes, dtype=np.int64)
    if codes.ndim != 2:
        raise InputError(f"neighbour codes must be (queries, k), not shape {codes.shape}")
    n_rows, k = codes.shape
    if n_rows == 0:
        return np.zeros(0, dtype=np.int64)
    valid = codes >= 0
    row_of = np.broadcast_to(np.arange(n_rows)[:, None], codes.shape)
    rank_of = np.broadcast_to(np.arange(k)[None, :], codes.shape)
    counts = np.zeros((n_rows, n_classes), dtype=np.int64)
    np.add.at(counts, (row_of[valid], codes[valid]), 1)
    first_rank = np.full((n_rows, n_classes), k, dtype=np.int64)
    np.minimum.at(first_rank, (row_of[valid], codes[valid]), rank_of[valid])
    # more votes wins; among equal votes the smaller first rank (ranks are < k, so this is exact)
    score = counts * (k + 1) + (k - first_rank)
    winner = np.argmax(score, axis=1).astype(np.int64)
    winner[counts.sum(axis=1) == 0] = NO_LABEL
    return winner


def predict_codes(
    distances: ArrayLike,
    reference_codes: ArrayLike,
    ks: Sequence[int],
    n_classes: int,
    *,
    diagonal_offset: int | None = None,
    overwrite_input: bool = False,
) -> dict[int, NDArray[np.int64]]:
    """Predicted class codes for every ``k`` in one pass (neighbours found once for ``max(ks)``).

    ``distances``: ``(B, n_refs)``; ``reference_codes``: ``(n_refs,)`` int codes. Returns
    ``{k: (B,) int64}``, :data:`NO_LABEL` where a query has no usable neighbour.
    """
    ref_codes = np.asarray(reference_codes, dtype=np.int64)
    ks = check_ks(ks)
    indices = _neighbours(
        distances,
        ref_codes,
        ks[-1],
        diagonal_offset=diagonal_offset,
        overwrite_input=overwrite_input,
    )
    return vote_neighbours(indices, ref_codes, ks, n_classes)


def vote_neighbours(
    indices: NDArray[np.int64],
    reference_codes: NDArray[np.int64],
    ks: Sequence[int],
    n_classes: int,
) -> dict[int, NDArray[np.int64]]:
    """``{k: (B,) codes}`` from the neighbours of :func:`top_k_neighbours` (``-1`` = none)."""
    neighbour_codes = np.where(indices >= 0, reference_codes[np.maximum(indices, 0)], NO_LABEL)
    return {k: vote(neighbour_codes[:, :k], n_classes) for k in ks}


def k_occurrence(indices: NDArray[np.int64], k: int, n_refs: int) -> NDArray[np.int64]:
    """``(n_refs,)``: how many rows of ``indices`` (neighbours nearest first, ``-1`` = none) have
    each reference among their first ``k`` neighbours: the k-occurrence N_k of hubness studies."""
    first = indices[:, :k]
    return np.bincount(first[first >= 0], minlength=n_refs).astype(np.int64)


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


# ---- hubness reduction -------------------------------------------------------------------------

# "none": plain distances (the protocol's k-NN); "mp": mutual proximity, Gaussian form
HUBNESS_REDUCTIONS = ("none", "mp")

_erfc = np.frompyfunc(math.erfc, 1, 1)


# cells per call of the elementwise erfc: its Python-object temporaries stay a few MiB
_SF_CHUNK = 1 << 16


def normal_sf(z: ArrayLike) -> NDArray[np.float64]:
    """P(Z > z) for a standard normal Z, elementwise (NaN stays NaN), to double precision
    (``math.erfc``; numpy has no erfc), in chunks so that memory stays bounded by the input."""
    values = np.asarray(z, dtype=np.float64) / math.sqrt(2.0)
    flat = values.reshape(-1)
    out = np.empty_like(flat)
    for start in range(0, flat.size, _SF_CHUNK):
        stop = start + _SF_CHUNK
        out[start:stop] = _erfc(flat[start:stop])
    return (0.5 * out).reshape(values.shape)


def row_moments(block: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and population standard deviation of each row over its non-NaN cells (NaN for a row
    without any)."""
    values = np.asarray(block, dtype=np.float64)
    valid = ~np.isnan(values)
    count = valid.sum(axis=1)
    total = np.where(valid, values, 0.0).sum(axis=1)
    mean = np.divide(total, count, out=np.full(count.shape, np.nan), where=count > 0)
    spread = np.where(valid, values - mean[:, None], 0.0)
    variance = np.divide(
        (spread**2).sum(axis=1), count, out=np.full(count.shape, np.nan), where=count > 0
    )
    return mean, np.sqrt(variance)


class ColumnMoments:
    """Mean and population standard deviation of every column over row blocks added one after
    another, NaN cells left out (Chan, Golub & LeVeque's pairwise update: no cancellation however
    close the distances lie to each other)."""

    def __init__(self, n_cols: int) -> None:
        self.count = np.zeros(n_cols, dtype=np.float64)
        self.mean = np.zeros(n_cols, dtype=np.float64)
        self.m2 = np.zeros(n_cols, dtype=np.float64)

    def add(self, block: ArrayLike) -> None:
        values = np.asarray(block, dtype=np.float64)
        valid = ~np.isnan(values)
        count = valid.sum(axis=0).astype(np.float64)
        total = np.where(valid, values, 0.0).sum(axis=0)
        mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        m2 = (np.where(valid, values - mean, 0.0) ** 2).sum(axis=0)
        merged = self.count + count
        delta = mean - self.mean
        share = np.divide(count, merged, out=np.zeros_like(merged), where=merged > 0)
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + m2 + delta**2 * self.count * share
        self.count = merged

    def mean_std(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        has = self.count > 0
        mean = np.where(has, self.mean, np.nan)
        variance = np.divide(self.m2, self.count, out=np.full_like(self.m2, np.nan), where=has)
        return mean, np.sqrt(variance)


def _tail(distances: NDArray[np.float64], mean: ArrayLike, std: ArrayLike) -> NDArray[np.float64]:
    """P(D > d) for D ~ N(mean, std²); with std 0 a step: 1 below the mean, 0 above, 1/2 at it."""
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (distances - mean) / std
    step = np.sign(distances - mean) * np.inf
    return normal_sf(np.where(std > 0, z, np.where(distances == mean, 0.0, step)))


def mutual_proximity(
    distances: ArrayLike,
    row_mean: ArrayLike,
    row_std: ArrayLike,
    col_mean: ArrayLike,
    col_std: ArrayLike,
) -> NDArray[np.float64]:
    """Mutual proximity, Gaussian form (Schnitzer, Flexer, Schedl & Widmer 2012, "Local and global
    scaling reduce hubs in space", JMLR 13): MP(x, y) = 1 − P(X > d)·P(Y > d), where X is the
    distance from query x to a random reference (mean and deviation of x's row) and Y the distance
    from a random query to reference y (of y's column). A reference that is near to everything
    has a low column mean, so being near it counts for less; MP is itself a distance in [0, 1].

    ``distances``: ``(B, n_refs)`` block; ``row_*``: ``(B,)``; ``col_*``: ``(n_refs,)``. NaN
    cells (not a neighbour) stay NaN."""
    block = np.asarray(distances, dtype=np.float64)
    row = _tail(block, np.asarray(row_mean)[:, None], np.asarray(row_std)[:, None])
    col = _tail(block, np.asarray(col_mean)[None, :], np.asarray(col_std)[None, :])
    return np.where(np.isnan(block), np.nan, 1.0 - row * col)


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


class KNNAccumulator:
    """Classifies row blocks one after another and keeps only the predicted codes.

    Memory: the reference codes plus ``(n_queries,)`` codes per ``k``; the distance blocks are not
    kept. ``codec`` fixes the label order (include the query labels in it to score).
    """

    def __init__(self, reference_labels: Sequence[object], ks: Iterable[int], codec: LabelCodec):
        self.codec = codec
        self.reference_codes = codec.encode(reference_labels)
        self.ks = check_ks(ks)
        self._blocks: dict[int, list[NDArray[np.int64]]] = {k: [] for k in self.ks}
        n_refs = int(self.reference_codes.shape[0])
        self._occurrence = {k: np.zeros(n_refs, dtype=np.int64) for k in self.ks}
        self._rows = 0

    def add_block(
        self,
        distances: ArrayLike,
        *,
        diagonal_offset: int | None = None,
        overwrite_input: bool = False,
    ) -> dict[int, NDArray[np.int64]]:
        """Classify a ``(B, n_refs)`` block; returns and records ``{k: (B,) codes}`` and counts
        each reference's k-occurrence (:meth:`hubness`)."""
        indices = _neighbours(
            distances,
            self.reference_codes,
            self.ks[-1],
            diagonal_offset=diagonal_offset,
            overwrite_input=overwrite_input,
        )
        codes = vote_neighbours(indices, self.reference_codes, self.ks, len(self.codec))
        n_refs = int(self.reference_codes.shape[0])
        for k, block in codes.items():
            self._blocks[k].append(block)
            self._occurrence[k] += k_occurrence(indices, k, n_refs)
        self._rows += int(indices.shape[0])
        return codes

    def hubness(self) -> list[Hubness]:
        """One :class:`Hubness` per ``k`` over the rows added so far."""
        return [Hubness.from_counts(self._occurrence[k], k, self._rows) for k in self.ks]

    def predicted_codes(self) -> dict[int, NDArray[np.int64]]:
        """``{k: (n_queries_so_far,) int64}`` in the order the blocks were added."""
        return {
            k: np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
            for k, blocks in self._blocks.items()
        }

    def metrics(self, true_labels: Sequence[object]) -> list[KNNMetrics]:
        """One :class:`KNNMetrics` per ``k`` against the true labels of the rows added."""
        true = self.codec.encode(true_labels)
        predicted = self.predicted_codes()
        if any(p.shape[0] != true.shape[0] for p in predicted.values()):
            raise InputError(
                f"{true.shape[0]} true labels for {next(iter(predicted.values())).shape[0]} queries"
            )
        return [score_predictions(true, predicted[k], self.codec, k) for k in self.ks]


def knn_classify(
    distances: ArrayLike,
    reference_labels: Sequence[object],
    ks: Iterable[int],
    *,
    leave_one_out: bool = False,
    block_rows: int = 1024,
) -> tuple[LabelCodec, dict[int, list[Hashable | None]]]:
    """Convenience over an in-memory ``(n_queries, n_refs)`` matrix: predicted labels per ``k``.

    ``leave_one_out``: the matrix is square (the references are the queries) and each query's own
    column is excluded.
    """
    matrix = np.asarray(distances)
    if matrix.ndim != 2:
        raise InputError(f"distances must be a (queries, references) matrix, not {matrix.shape}")
    if leave_one_out and matrix.shape[0] != matrix.shape[1]:
        raise InputError(f"leave-one-out needs a square matrix, not {matrix.shape}")
    codec = LabelCodec.from_labels(reference_labels)
    n_candidates = matrix.shape[1] - (1 if leave_one_out else 0)
    accumulator = KNNAccumulator(reference_labels, check_ks(ks, n_candidates), codec)
    for start in range(0, matrix.shape[0], max(1, block_rows)):
        accumulator.add_block(
            matrix[start : start + block_rows], diagonal_offset=start if leave_one_out else None
        )
    return codec, {k: codec.decode(c) for k, c in accumulator.predicted_codes().items()}

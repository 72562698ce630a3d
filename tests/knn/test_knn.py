"""k-NN stage: the PROTOCOL.md tie rule, NaN handling, leave-one-out, several k, metrics."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nncd_ray.errors import ConfigError, InputError
from nncd_ray.knn.accumulator import KNNAccumulator, knn_classify
from nncd_ray.knn.labels import NO_LABEL, LabelCodec
from nncd_ray.knn.neighbours import check_ks, k_occurrence, predict_codes, top_k_neighbours, vote
from nncd_ray.knn.statistics import (
    Hubness,
    PairedComparison,
    confusion_matrix,
    macro_f1,
    mcnemar_exact,
    score_predictions,
    wilson_interval,
)


def reference_predict(
    row: Sequence[float], labels: Sequence[Hashable], k: int, exclude: int | None = None
) -> Hashable | None:
    """Plain-Python statement of the rule: sort by (distance, index), drop NaN, majority vote, a
    tie to the class whose first member is nearest."""
    order = sorted(
        (j for j, d in enumerate(row) if not math.isnan(d) and j != exclude),
        key=lambda j: (row[j], j),
    )[:k]
    votes: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for rank, j in enumerate(order):
        votes[labels[j]] = votes.get(labels[j], 0) + 1
        first.setdefault(labels[j], rank)
    if not votes:
        return None
    return max(votes, key=lambda label: (votes[label], -first[label]))


def predict(distances: Sequence[Sequence[float]], labels: Sequence[Hashable], k: int) -> list:
    _, predictions = knn_classify(np.asarray(distances, dtype=np.float64), labels, [k])
    return predictions[k]


# ---- the tie rule, by hand -------------------------------------------------------------------


def test_one_vote_each_goes_to_the_nearest_class() -> None:
    assert predict([[0.3, 0.1, 0.2]], ["a", "b", "c"], 3) == ["b"]


def test_two_all_tie_goes_to_the_class_whose_nearest_member_is_nearest() -> None:
    # a: ranks 0 and 3, b: ranks 1 and 2 -> 2 votes each, a has the nearest member
    assert predict([[0.1, 0.2, 0.3, 0.4]], ["a", "b", "b", "a"], 4) == ["a"]
    assert predict([[0.4, 0.2, 0.3, 0.1]], ["a", "b", "b", "a"], 4) == ["a"]
    assert predict([[0.2, 0.1, 0.3, 0.4]], ["a", "b", "b", "a"], 4) == ["b"]


def test_majority_beats_nearest() -> None:
    assert predict([[0.1, 0.2, 0.3]], ["a", "b", "b"], 3) == ["b"]


def test_never_top_two() -> None:
    """A tie where the true class is the second tied class counts as wrong, not right."""
    codec = LabelCodec.from_labels(["a", "b"])
    predicted = predict_codes(
        np.array([[0.1, 0.2]]), codec.encode(["a", "b"]), [2], n_classes=len(codec)
    )
    metrics = score_predictions(codec.encode(["b"]), predicted[2], codec, 2)
    assert metrics.accuracy == 0.0
    assert metrics.n_correct == 0


def test_equal_distances_are_ordered_by_reference_index() -> None:
    assert predict([[0.5, 0.5]], ["b", "a"], 1) == ["b"]
    assert predict([[0.5, 0.5]], ["a", "b"], 1) == ["a"]
    # a 1-1 vote tie between equally distant references: the lower index is the nearer
    assert predict([[0.5, 0.5, 0.9]], ["b", "a", "a"], 2) == ["b"]


def test_ties_straddling_the_kth_place_take_the_lowest_indices() -> None:
    indices, dists = top_k_neighbours(np.array([[0.1, 0.5, 0.5, 0.5, 0.2, 0.5]]), 3)
    assert indices.tolist() == [[0, 4, 1]]
    assert dists.tolist() == [[0.1, 0.2, 0.5]]
    everything_equal = np.full((3, 50), 0.7)
    indices, _ = top_k_neighbours(everything_equal, 4)
    assert indices.tolist() == [[0, 1, 2, 3]] * 3
    # neighbour order never depends on the order argpartition happened to leave
    rng = np.random.default_rng(0)
    values = rng.choice([0.1, 0.2, 0.3], size=(40, 60))
    indices, _ = top_k_neighbours(values, 7)
    for row, got in zip(values, indices, strict=True):
        assert got.tolist() == sorted(range(60), key=lambda j: (row[j], j))[:7]


def test_vote_on_codes_directly() -> None:
    codes = np.array([[2, 1, 1, 2], [0, 1, 2, 3], [NO_LABEL, NO_LABEL, NO_LABEL, NO_LABEL]])
    assert vote(codes, 4).tolist() == [2, 0, NO_LABEL]


# ---- NaN, leave-one-out ------------------------------------------------------------------------


def test_nan_is_never_a_neighbour() -> None:
    nan = float("nan")
    indices, dists = top_k_neighbours(np.array([[nan, 0.9, nan, 0.8], [nan, nan, nan, nan]]), 3)
    assert indices.tolist() == [[3, 1, -1], [-1, -1, -1]]
    assert (
        dists[0, :2].tolist() == [0.8, 0.9] and np.isnan(dists[0, 2]) and np.isnan(dists[1]).all()
    )
    assert predict([[nan, 0.9, nan, 0.8], [nan, nan, nan, nan]], ["a", "b", "c", "d"], 3) == [
        "d",
        None,
    ]


def test_nan_never_beats_a_real_infinite_distance() -> None:
    nan, inf = float("nan"), float("inf")
    indices, _ = top_k_neighbours(np.array([[nan, inf, 0.2, nan, inf]]), 4)
    assert indices.tolist() == [[2, 1, 4, -1]]


def test_leave_one_out_excludes_the_diagonal_with_a_block_offset() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.random((9, 9))
    np.fill_diagonal(matrix, 0.0)  # self-distance is the smallest; must be ignored
    labels = ["x", "y", "z"] * 3
    _, whole = knn_classify(matrix, labels, [1, 3], leave_one_out=True, block_rows=4)
    for i in range(9):
        for k in (1, 3):
            assert whole[k][i] == reference_predict(matrix[i].tolist(), labels, k, exclude=i)
    indices, _ = top_k_neighbours(matrix[4:7], 8, diagonal_offset=4)
    for b, row in enumerate(indices):
        assert 4 + b not in row.tolist()
        assert sorted(row.tolist()) == [j for j in range(9) if j != 4 + b]


def test_leave_one_out_needs_a_square_matrix_and_enough_references() -> None:
    with pytest.raises(InputError, match="square"):
        knn_classify(np.zeros((2, 3)), ["a", "b", "c"], [1], leave_one_out=True)
    with pytest.raises(ConfigError, match="k=3"):
        knn_classify(np.zeros((3, 3)), ["a", "b", "c"], [3], leave_one_out=True)


# ---- several k, labels --------------------------------------------------------------------------


def test_several_k_in_one_pass_equal_separate_runs() -> None:
    rng = np.random.default_rng(2)
    matrix = rng.choice(np.linspace(0.2, 1.0, 9), size=(30, 25))
    labels = rng.integers(0, 4, size=25).tolist()
    _, together = knn_classify(matrix, labels, [7, 1, 5, 3])
    for k in (1, 3, 5, 7):
        assert together[k] == predict(matrix.tolist(), labels, k)
        assert together[k] == [reference_predict(row, labels, k) for row in matrix.tolist()]


@pytest.mark.parametrize(
    "labels",
    [[3, 1, 2, 1, 3, 2], ["World", "Sports", "Business", "Sports", "World", "Business"]],
)
def test_int_and_str_labels_round_trip(labels: list) -> None:
    matrix = np.array([[0.1, 0.5, 0.6, 0.7, 0.8, 0.9], [0.9, 0.8, 0.2, 0.3, 0.4, 0.1]])
    codec, predictions = knn_classify(matrix, labels, [1, 3])
    assert predictions[1] == [labels[0], labels[5]]
    assert predictions[3] == [reference_predict(row, labels, 3) for row in matrix.tolist()]
    assert all(type(p) is type(labels[0]) for p in predictions[1])
    assert list(codec.labels) == sorted(set(labels))
    assert LabelCodec.from_labels([10, 9, 100]).labels == (9, 10, 100)  # numeric, not string order
    assert LabelCodec.from_labels(np.array([2, 1], dtype=np.int64)).labels == (1, 2)
    with pytest.raises(InputError, match="not one of"):
        codec.encode(["unknown"])


def test_check_ks() -> None:
    assert check_ks([7, 1, 3, 3]) == (1, 3, 7)
    for bad in ([], [0], [-1], [1.5], [True]):
        with pytest.raises(ConfigError):
            check_ks(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="only 4"):
        check_ks([5], 4)


# ---- metrics -----------------------------------------------------------------------------------


def test_metrics_match_scikit_learn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    true = rng.integers(0, 5, size=200)
    predicted = np.where(rng.random(200) < 0.6, true, rng.integers(0, 4, size=200))
    assert (
        confusion_matrix(true, predicted, 5).tolist()
        == sklearn_metrics.confusion_matrix(true, predicted, labels=list(range(5))).tolist()
    )
    assert macro_f1(true, predicted, 5) == pytest.approx(
        sklearn_metrics.f1_score(true, predicted, average="macro")
    )
    # a class that is never true nor predicted does not count in the mean
    assert macro_f1(true, predicted, 7) == pytest.approx(macro_f1(true, predicted, 5))


def test_score_predictions_by_hand() -> None:
    codec = LabelCodec.from_labels(["a", "b"])
    true = codec.encode(["a", "a", "b", "b"])
    predicted = np.array([0, 1, 1, NO_LABEL])
    metrics = score_predictions(true, predicted, codec, 1)
    assert metrics.accuracy == 0.5 and metrics.n_correct == 2 and metrics.n_unpredicted == 1
    assert metrics.confusion == ((1, 1), (0, 1))
    # F1(a) = 2*1/(2+1), F1(b) = 2*1/(2+2)
    assert metrics.macro_f1 == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics.to_dict()["labels"] == ["a", "b"]


def test_accumulator_scores_blocks() -> None:
    codec = LabelCodec.from_labels(["a", "b"])
    accumulator = KNNAccumulator(["a", "b", "a"], [1, 3], codec)
    accumulator.add_block(np.array([[0.1, 0.2, 0.3]]))
    accumulator.add_block(np.array([[0.3, 0.1, 0.2], [0.3, 0.1, 0.9]]))
    assert {k: v.tolist() for k, v in accumulator.predicted_codes().items()} == {
        1: [0, 1, 1],
        3: [0, 0, 0],
    }
    metrics = accumulator.metrics(["a", "b", "b"])
    assert [m.accuracy for m in metrics] == [1.0, pytest.approx(1 / 3)]
    with pytest.raises(InputError):
        accumulator.metrics(["a"])


# ---- properties --------------------------------------------------------------------------------


@st.composite
def knn_cases(draw: st.DrawFn, *, distinct: bool) -> tuple[np.ndarray, list[int], np.ndarray, int]:
    n_queries = draw(st.integers(1, 6))
    n_refs = draw(st.integers(1, 12))
    if distinct:  # distinct distances in every row: no tie anywhere
        rows = [draw(st.permutations(list(range(n_refs)))) for _ in range(n_queries)]
        matrix = (np.asarray(rows, dtype=np.float64) + 1.0) / (n_refs + 1.0)
    else:  # few distinct values (ties everywhere) and some NaN
        values = st.sampled_from([0.1, 0.2, 0.3, float("nan")])
        matrix = np.asarray(
            draw(
                st.lists(
                    st.lists(values, min_size=n_refs, max_size=n_refs),
                    min_size=n_queries,
                    max_size=n_queries,
                )
            ),
            dtype=np.float64,
        )
    labels = draw(st.lists(st.integers(0, 3), min_size=n_refs, max_size=n_refs))
    permutation = np.asarray(draw(st.permutations(list(range(n_refs)))), dtype=np.int64)
    k = draw(st.integers(1, n_refs))
    return matrix, labels, permutation, k


@settings(max_examples=150, deadline=None)
@given(knn_cases(distinct=True))
def test_permuting_references_without_ties_changes_nothing(
    case: tuple[np.ndarray, list[int], np.ndarray, int],
) -> None:
    matrix, labels, permutation, k = case
    _, before = knn_classify(matrix, labels, [k])
    _, after = knn_classify(matrix[:, permutation], [labels[j] for j in permutation], [k])
    assert before == after


@settings(max_examples=200, deadline=None)
@given(knn_cases(distinct=False))
def test_with_ties_the_result_is_the_rule_applied_to_the_permuted_indices(
    case: tuple[np.ndarray, list[int], np.ndarray, int],
) -> None:
    """Exact-distance ties are resolved by reference index, so after a permutation the expectation
    is the plain-Python rule on the permuted matrix (index order changes, nothing else)."""
    matrix, labels, permutation, k = case
    permuted = matrix[:, permutation]
    permuted_labels = [labels[j] for j in permutation]
    _, got = knn_classify(permuted, permuted_labels, [k])
    assert got[k] == [reference_predict(row, permuted_labels, k) for row in permuted.tolist()]
    _, unpermuted = knn_classify(matrix, labels, [k])
    assert unpermuted[k] == [reference_predict(row, labels, k) for row in matrix.tolist()]


def test_input_is_left_alone_unless_overwrite_is_allowed() -> None:
    rng = np.random.default_rng(5)
    matrix = rng.random((6, 9))
    matrix[2, 3] = np.nan
    original = matrix.copy()
    plain = top_k_neighbours(matrix, 4, diagonal_offset=0)
    np.testing.assert_array_equal(matrix, original)
    scratch = top_k_neighbours(matrix, 4, diagonal_offset=0, overwrite_input=True)
    np.testing.assert_array_equal(plain[0], scratch[0])
    np.testing.assert_array_equal(plain[1], scratch[1])


# ---- uncertainty and hubness -------------------------------------------------------------------


def wilson_by_bisection(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, ...]:
    """The Wilson interval from its definition: the proportions pi with
    |p - pi| = z * sqrt(pi (1 - pi) / n), found by bisection on each side of p."""
    p = successes / n

    def gap(pi: float) -> float:
        return (p - pi) ** 2 - z * z * pi * (1 - pi) / n

    def root(lo: float, hi: float) -> float:  # gap(lo) and gap(hi) differ in sign
        for _ in range(200):
            mid = (lo + hi) / 2
            if (gap(mid) > 0) == (gap(lo) > 0):
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    low = 0.0 if successes == 0 else root(0.0, p)
    high = 1.0 if successes == n else root(p, 1.0)
    return (low, high)


@pytest.mark.parametrize(("successes", "n"), [(88, 200), (97, 200), (0, 10), (10, 10), (1, 3)])
def test_wilson_interval_solves_its_definition(successes: int, n: int) -> None:
    low, high = wilson_interval(successes, n)
    assert (low, high) == pytest.approx(wilson_by_bisection(successes, n), abs=1e-12)
    assert 0.0 <= low <= successes / n <= high <= 1.0


def test_wilson_interval_of_no_queries_is_nan() -> None:
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def mcnemar_by_enumeration(only_first: int, only_second: int) -> float:
    """Probability, under a fair coin per discordant query, of an outcome at most as likely as
    the one seen (the two-sided exact test; the binomial(n, 1/2) is symmetric)."""
    n = only_first + only_second
    probabilities = [math.comb(n, i) / 2**n for i in range(n + 1)]
    seen = probabilities[only_first]
    return min(1.0, sum(p for p in probabilities if p <= seen * (1 + 1e-12)))


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 5), (1, 9), (29, 38), (38, 29), (21, 21)])
def test_mcnemar_exact(b: int, c: int) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(mcnemar_by_enumeration(b, c), rel=1e-12)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)


def test_paired_comparison_counts() -> None:
    true = [1, 1, 2, 2, 3]
    this = [1, 2, 2, 1, 3]  # right on 0, 2, 4
    baseline = [1, 1, 1, 2, 2]  # right on 0, 1, 3
    paired = PairedComparison.of(1, true, this, baseline)
    assert (paired.both_right, paired.only_this, paired.only_baseline) == (1, 2, 2)
    assert paired.p_value == 1.0 and paired.to_dict()["n_queries"] == 5
    with pytest.raises(InputError):
        PairedComparison.of(1, true, this, baseline[:4])


def test_hubness_from_counts_by_hand() -> None:
    hubs = Hubness.from_counts([5, 0, 0, 1, 0], k=1, n_queries=6)
    # mean 1.2; population moments m2 = 3.76, m3 = 9.936
    assert hubs.skewness == pytest.approx(9.936 / 3.76**1.5)
    assert (hubs.max_count, hubs.never, hubs.top) == (5, 3, ((0, 5), (3, 1)))
    even = Hubness.from_counts([2, 2, 2], k=2, n_queries=3)
    assert even.skewness == 0.0 and even.never == 0
    # ties in the top list go to the lower column
    assert Hubness.from_counts([1, 3, 3, 0], k=1, n_queries=7).top == ((1, 3), (2, 3), (0, 1))


def test_accumulator_counts_k_occurrence_over_blocks() -> None:
    rng = np.random.default_rng(3)
    distances = rng.random((9, 6))
    distances[:, 4] -= 1.0  # reference 4 is everybody's nearest: a hub
    distances[2, 1] = np.nan
    labels = ["a", "b", "a", "b", "a", "b"]
    codec = LabelCodec.from_labels(labels)
    whole = KNNAccumulator(labels, [1, 3], codec)
    whole.add_block(distances)
    blocks = KNNAccumulator(labels, [1, 3], codec)
    for start in range(0, 9, 4):
        blocks.add_block(distances[start : start + 4])
    for hubs_whole, hubs_blocks in zip(whole.hubness(), blocks.hubness(), strict=True):
        assert hubs_whole == hubs_blocks
    one, three = whole.hubness()
    assert one.top == ((4, 9),) and one.never == 5 and one.n_queries == 9
    expected = np.zeros(6, dtype=np.int64)
    for row in distances:
        order = sorted((j for j in range(6) if not np.isnan(row[j])), key=lambda j: (row[j], j))
        expected[order[:3]] += 1
    indices, _ = top_k_neighbours(distances, 3)
    assert k_occurrence(indices, 3, 6).tolist() == expected.tolist()
    assert three.max_count == 9 and sum(c for _, c in three.top) <= 27


def test_leave_one_out_never_counts_the_query_itself() -> None:
    distances = np.full((4, 4), 0.5)
    np.fill_diagonal(distances, 0.0)
    codec = LabelCodec.from_labels(["a", "b", "a", "b"])
    accumulator = KNNAccumulator(["a", "b", "a", "b"], [1], codec)
    accumulator.add_block(distances, diagonal_offset=0)
    # every other reference ties at 0.5, so each query takes the lowest other index
    assert accumulator.hubness()[0].top == ((0, 3), (1, 1))


def test_normal_sf_across_chunks() -> None:
    from statistics import NormalDist

    from nncd_ray.knn.mutual_proximity import normal_sf

    z = np.linspace(-9.0, 9.0, 70_007).reshape(7, 10_001)  # more than one 64k-cell chunk
    z[3, 5] = np.nan
    sf = normal_sf(z)
    assert sf.shape == z.shape and math.isnan(sf[3, 5])
    for index in [(0, 0), (2, 17), (6, 10_000), (5, 5_000), (4, 6_553)]:
        assert sf[index] == pytest.approx(1 - NormalDist().cdf(z[index]), rel=1e-9, abs=1e-15)
    assert np.all(np.diff(sf[np.isfinite(sf)]) <= 0)  # decreasing along the flattened order

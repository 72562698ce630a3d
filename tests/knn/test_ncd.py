"""NCD math: the formula, its bounds for compressor-like C, ncd-min symmetry, NaN, shape errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nncd_ray.errors import ConfigError, InputError
from nncd_ray.ncd import VARIANTS, bits_per_byte, corpus_bits_per_byte, ncd_matrix

positive_bits = st.floats(min_value=1.0, max_value=1e6, allow_nan=False, allow_infinity=False)
fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def distinct_symbols(text: str) -> float:
    """A compressor-like code length: C(xy) >= max(C(x), C(y)) and C(xy) <= C(x) + C(y)."""
    return float(len(set(text)) + 1)


def test_formula_by_hand() -> None:
    # C(x) = 100, C(y) = 60, C(xy) = 130 -> (130 - 60) / 100
    result = ncd_matrix([100.0], [60.0], [[130.0]])
    assert result.shape == (1, 1) and result.dtype == np.float64
    assert result[0, 0] == pytest.approx(0.7)


def test_variants_listed() -> None:
    assert VARIANTS == ("ncd", "ncd-min")


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n_rows=st.integers(1, 6), n_cols=st.integers(1, 6))
def test_bounds_when_pair_lies_between_max_and_sum(
    data: st.DataObject, n_rows: int, n_cols: int
) -> None:
    rows = np.array(data.draw(st.lists(positive_bits, min_size=n_rows, max_size=n_rows)))
    cols = np.array(data.draw(st.lists(positive_bits, min_size=n_cols, max_size=n_cols)))
    t = np.array(data.draw(st.lists(fractions, min_size=n_rows * n_cols, max_size=n_rows * n_cols)))
    larger = np.maximum(rows[:, None], cols[None, :])
    smaller = np.minimum(rows[:, None], cols[None, :])
    # C(xy) anywhere in [max, C(x) + C(y)]: the axioms of a normal compressor
    pairs = larger + t.reshape(n_rows, n_cols) * smaller
    result = ncd_matrix(rows, cols, pairs)
    assert np.all(result >= -1e-12) and np.all(result <= 1 + 1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=6))
def test_bounds_for_a_compressor_like_function(texts: list[str]) -> None:
    bits = np.array([distinct_symbols(t) for t in texts])
    pairs = np.array([[distinct_symbols(x + " " + y) for y in texts] for x in texts])
    for variant in VARIANTS:
        result = ncd_matrix(bits, bits, pairs, variant, square=True)
        assert np.all((result >= 0) & (result <= 1))


@settings(max_examples=100, deadline=None)
@given(
    pairs=hnp.arrays(
        np.float64, st.tuples(st.integers(1, 7), st.integers(1, 7)), elements=positive_bits
    )
)
def test_ncd_min_is_symmetric_on_square_input(pairs: np.ndarray) -> None:
    n = min(pairs.shape)
    pairs = pairs[:n, :n]
    bits = np.diag(pairs) / 2 + 1.0
    result = ncd_matrix(bits, bits, pairs, "ncd-min", square=True)
    np.testing.assert_array_equal(result, result.T)
    explicit = ncd_matrix(bits, bits, pairs, "ncd-min", pair_bits_reversed=pairs.T)
    np.testing.assert_array_equal(result, explicit)


def test_ncd_is_not_symmetrised() -> None:
    bits = np.array([10.0, 10.0])
    pairs = np.array([[12.0, 15.0], [18.0, 12.0]])
    result = ncd_matrix(bits, bits, pairs)
    assert result[0, 1] == pytest.approx(0.5) and result[1, 0] == pytest.approx(0.8)
    assert ncd_matrix(bits, bits, pairs, "ncd-min", square=True)[1, 0] == pytest.approx(0.5)


def test_rectangular_ncd_min_uses_reversed_pairs() -> None:
    rows, cols = np.array([10.0]), np.array([20.0, 40.0])
    forward = np.array([[25.0, 45.0]])
    reverse = np.array([[22.0, 48.0]])  # C(y_j x_0)
    result = ncd_matrix(rows, cols, forward, "ncd-min", pair_bits_reversed=reverse)
    np.testing.assert_allclose(result, [[(22 - 10) / 20, (45 - 10) / 40]])


def test_rectangular_ncd_min_without_reversed_is_refused() -> None:
    with pytest.raises(ConfigError, match="pair_bits_reversed"):
        ncd_matrix([1.0], [2.0, 3.0], [[3.0, 4.0]], "ncd-min")


@settings(max_examples=60, deadline=None)
@given(
    mask=hnp.arrays(np.bool_, st.tuples(st.integers(1, 6), st.integers(1, 6))),
    value=positive_bits,
)
def test_nan_pairs_stay_nan_and_only_there(mask: np.ndarray, value: float) -> None:
    n_rows, n_cols = mask.shape
    pairs = np.full(mask.shape, value * 1.5)
    pairs[mask] = np.nan
    result = ncd_matrix(np.full(n_rows, value), np.full(n_cols, value), pairs)
    np.testing.assert_array_equal(np.isnan(result), mask)


def test_nan_in_either_order_makes_ncd_min_nan() -> None:
    bits = np.array([10.0, 10.0, 10.0])
    pairs = np.full((3, 3), 15.0)
    pairs[0, 2] = np.nan
    result = ncd_matrix(bits, bits, pairs, "ncd-min", square=True)
    assert np.isnan(result[0, 2]) and np.isnan(result[2, 0])
    assert np.isnan(result).sum() == 2


def test_nan_document_bits_blank_their_row() -> None:
    result = ncd_matrix([np.nan, 10.0], [10.0], [[15.0], [15.0]])
    assert np.isnan(result[0, 0]) and result[1, 0] == pytest.approx(0.5)


def test_values_outside_unit_interval_are_kept() -> None:
    # C(xy) below min and above the sum: a real compressor's deviations are not clipped
    result = ncd_matrix([100.0, 100.0], [100.0], [[80.0], [260.0]])
    np.testing.assert_allclose(result, [[-0.2], [1.6]])


def test_zero_length_documents_give_nan() -> None:
    result = ncd_matrix([0.0, 4.0], [0.0], [[0.0], [4.0]])
    assert np.isnan(result[0, 0]) and result[1, 0] == pytest.approx(1.0)  # (4 - 0) / 4


def test_float32_inputs_give_float64() -> None:
    bits = np.array([8.0, 16.0], dtype=np.float32)
    result = ncd_matrix(bits, bits, np.full((2, 2), 20.0, dtype=np.float32))
    assert result.dtype == np.float64


@pytest.mark.parametrize(
    ("rows", "cols", "pairs", "kwargs", "message"),
    [
        ([[1.0]], [1.0], [[1.0]], {}, "row_bits must be one-dimensional"),
        ([1.0], [[1.0]], [[1.0]], {}, "col_bits must be one-dimensional"),
        ([1.0, 2.0], [1.0], [[1.0, 2.0]], {}, "pair_bits has shape"),
        ([1.0], [1.0], [1.0], {}, "pair_bits has shape"),
        (
            [1.0],
            [1.0, 2.0],
            [[1.0, 2.0]],
            {"variant": "ncd-min", "pair_bits_reversed": [[1.0]]},
            "pair_bits_reversed has shape",
        ),
        ([1.0], [1.0, 2.0], [[1.0, 2.0]], {"square": True}, "square=True"),
    ],
)
def test_shape_errors(
    rows: list[float], cols: list[float], pairs: list[float], kwargs: dict, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        ncd_matrix(rows, cols, pairs, **kwargs)


def test_unknown_variant() -> None:
    with pytest.raises(ConfigError, match="unknown NCD variant"):
        ncd_matrix([1.0], [1.0], [[1.0]], "ncd-max")


def test_bits_per_byte() -> None:
    assert bits_per_byte(48.0, 6) == 8.0
    assert isinstance(bits_per_byte(48.0, 6), float)
    np.testing.assert_allclose(bits_per_byte([10.0, 30.0], [5, 10]), [2.0, 3.0])
    assert corpus_bits_per_byte([10.0, 30.0], [5, 10]) == pytest.approx(40 / 15)
    with pytest.raises(InputError):
        bits_per_byte([1.0, 2.0], [1, 0])
    with pytest.raises(InputError):
        corpus_bits_per_byte([], [])

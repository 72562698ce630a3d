"""Normalized Compression Distance from code lengths (pure numpy).

``NCD(x, y) = (C(xy) − min(C(x), C(y))) / max(C(x), C(y))`` (Cilibrasi & Vitányi 2005), with every C
in bits (any common unit works: NCD is a ratio). Variants (``shared/DESIGN.md`` §2):

- ``ncd``: C(xy) with x = the row (query) document and y = the column (reference) document.
- ``ncd-min``: ``min(C(xy), C(yx))``, symmetric. On a square self-matrix ``C(yx)`` is the transpose
  of the pair matrix; a rectangular job must have computed the reversed pairs.

Values outside [0, 1] are kept, not clipped. A real compressor is not the ideal one: gzip's headers
and window make ``C(xy) < max(C(x), C(y))`` or ``C(xy) > C(x) + C(y)`` possible, and a language
model can find y cheaper after x than alone by more than the normaliser allows. Clipping would tie
distinct distances at 0 or 1 and hide how far a compressor is from the ideal, so the k-NN stage sees
the raw value. NaN (a pair not computed yet) stays NaN; a pair whose two documents both cost 0 bits
has no defined distance and is NaN too.
"""

from __future__ import annotations

from typing import overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nncd_ray.errors import ConfigError, InputError

VARIANTS: tuple[str, ...] = ("ncd", "ncd-min")


def _vector(name: str, values: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise InputError(f"{name} must be one-dimensional (n,), got shape {array.shape}")
    return array


def _check_pairs(name: str, values: ArrayLike, shape: tuple[int, int]) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape:
        raise InputError(
            f"{name} has shape {array.shape}; (len(row_bits), len(col_bits)) = {shape} expected"
        )
    return array


def ncd_matrix(
    row_bits: ArrayLike,
    col_bits: ArrayLike,
    pair_bits: ArrayLike,
    variant: str = "ncd",
    pair_bits_reversed: ArrayLike | None = None,
    *,
    square: bool = False,
) -> NDArray[np.float64]:
    """NCD of every (row, column) pair: ``(n_rows, n_cols) float64``.

    ``row_bits``: (R,) C(x) of the row documents; ``col_bits``: (C,) C(y) of the column documents;
    ``pair_bits``: (R, C) C(x_i y_j), row document first. ``pair_bits_reversed``: (R, C) with
    element [i, j] = C(y_j x_i), needed by ``ncd-min`` unless ``square`` is set, in which case rows
    and columns are the same documents and ``C(y_j x_i) = pair_bits[j, i]``. Any float dtype in; the
    arithmetic is float64. Raises :class:`InputError` on shape mismatches and
    :class:`ConfigError` on an unknown variant or an ``ncd-min`` that lacks the reversed pairs.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown NCD variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    rows = _vector("row_bits", row_bits)
    cols = _vector("col_bits", col_bits)
    shape = (rows.shape[0], cols.shape[0])
    joint = _check_pairs("pair_bits", pair_bits, shape)
    if square and shape[0] != shape[1]:
        raise InputError(f"square=True needs as many rows as columns, got {shape}")
    if variant == "ncd-min":
        if pair_bits_reversed is not None:
            reversed_ = _check_pairs("pair_bits_reversed", pair_bits_reversed, shape)
        elif square:
            reversed_ = joint.T
        else:
            raise ConfigError(
                "ncd-min on a rectangular matrix needs pair_bits_reversed (C(yx)); compute the "
                "matrix with variant ncd-min, or use variant ncd"
            )
        # np.minimum (not fmin) so that a missing order keeps the cell NaN
        joint = np.minimum(joint, reversed_)
    smaller = np.minimum(rows[:, None], cols[None, :])
    larger = np.maximum(rows[:, None], cols[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = (joint - smaller) / larger
    distance[larger == 0] = np.nan
    return np.asarray(distance, dtype=np.float64)


def ncd_cells(
    row_bits: ArrayLike,
    col_bits: ArrayLike,
    pair_bits: ArrayLike,
    variant: str = "ncd",
    pair_bits_reversed: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """NCD of each row's own columns (a sparse store's candidates): ``(R, M) float64``.

    ``row_bits``: (R,) C(x); ``col_bits``: (R, M) C(y) of the column in each cell; ``pair_bits``:
    (R, M) C(x y); ``pair_bits_reversed``: (R, M) C(y x), needed by ``ncd-min``. The same formula
    as :func:`ncd_matrix`, cell by cell."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown NCD variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    rows = _vector("row_bits", row_bits)
    joint = _check_pairs("pair_bits", pair_bits, (rows.shape[0], np.shape(pair_bits)[-1]))
    cols = _check_pairs("col_bits", col_bits, joint.shape)
    if variant == "ncd-min":
        if pair_bits_reversed is None:
            raise ConfigError(
                "ncd-min needs pair_bits_reversed (C(yx)); compute the matrix with variant "
                "ncd-min, or use variant ncd"
            )
        joint = np.minimum(
            joint, _check_pairs("pair_bits_reversed", pair_bits_reversed, joint.shape)
        )
    smaller = np.minimum(rows[:, None], cols)
    larger = np.maximum(rows[:, None], cols)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = (joint - smaller) / larger
    distance[larger == 0] = np.nan
    return np.asarray(distance, dtype=np.float64)


@overload
def bits_per_byte(bits: float, n_bytes: int) -> float: ...


@overload
def bits_per_byte(bits: ArrayLike, n_bytes: ArrayLike) -> NDArray[np.float64]: ...


def bits_per_byte(bits: ArrayLike, n_bytes: ArrayLike) -> float | NDArray[np.float64]:
    """Code length per UTF-8 byte, elementwise: ``bits / n_bytes``.

    Scalars in, float out; arrays in (broadcast together), float64 array out. ``n_bytes`` must be
    positive (an empty document has no rate). For a corpus-level figure use
    :func:`corpus_bits_per_byte` (ratio of totals) or the mean of this (mean over documents).
    """
    numerator = np.asarray(bits, dtype=np.float64)
    denominator = np.asarray(n_bytes, dtype=np.float64)
    if np.any(denominator <= 0):
        raise InputError("bits per byte needs a positive number of bytes for every document")
    ratio = numerator / denominator
    if ratio.ndim == 0:
        return float(ratio)
    return np.asarray(ratio, dtype=np.float64)


def corpus_bits_per_byte(bits: ArrayLike, n_bytes: ArrayLike) -> float:
    """Total code length over total UTF-8 bytes (``shared/bench/PROTOCOL.md``, Compression)."""
    total_bytes = float(np.sum(np.asarray(n_bytes, dtype=np.float64)))
    if total_bytes <= 0:
        raise InputError("bits per byte needs a positive number of bytes")
    return float(np.sum(np.asarray(bits, dtype=np.float64))) / total_bytes


__all__ = ["VARIANTS", "bits_per_byte", "corpus_bits_per_byte", "ncd_cells", "ncd_matrix"]

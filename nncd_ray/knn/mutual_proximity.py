"""Mutual proximity (Schnitzer et al. 2012, Gaussian form): a hubness reduction that ranks
neighbours by how mutually near two documents are, given each one's distance distribution.

Opt-in (``--hubness-reduction mp``) and not ``shared/bench/PROTOCOL.md``'s k-NN. Pure numpy.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

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

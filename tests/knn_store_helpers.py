"""Build matrix stores with plain zarr in the public layout (DESIGN.md §5), for k-NN tests.

Independent of ``nncd_ray.matrix.store.matrix_store`` on purpose: the k-NN stage must read any store
that follows the documented layout, not just the ones this project's writer makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr


def write_plain_store(
    path: Path | str,
    *,
    pair_bits: np.ndarray,
    row_bits: np.ndarray,
    col_bits: np.ndarray,
    tile: int,
    row_labels: Sequence[Any] | None,
    col_labels: Sequence[Any] | None,
    square: bool = False,
    variant: str = "ncd",
    row_bytes: np.ndarray | None = None,
    col_bytes: np.ndarray | None = None,
    done: np.ndarray | None = None,
    pair_bits_reversed: np.ndarray | None = None,
    compressor: dict[str, Any] | None = None,
) -> str:
    """Write a store; cells of tiles not ``done`` stay NaN (they are never written), like a job
    interrupted after the done tiles. Returns the path as a string."""
    n_rows, n_cols = pair_bits.shape
    grid = (-(-n_rows // tile), -(-n_cols // tile))
    done = np.ones(grid, dtype=bool) if done is None else np.asarray(done, dtype=bool)
    group = zarr.open_group(str(path), mode="w")
    arrays = {"pair_bits": pair_bits}
    if pair_bits_reversed is not None:
        arrays["pair_bits_reversed"] = pair_bits_reversed
    for name, values in arrays.items():
        array = group.create_array(
            name, shape=(n_rows, n_cols), chunks=(tile, tile), dtype="float32", fill_value=np.nan
        )
        for tr, tc in zip(*np.nonzero(done), strict=True):
            rows = slice(tr * tile, (tr + 1) * tile)
            cols = slice(tc * tile, (tc + 1) * tile)
            array[rows, cols] = values[rows, cols].astype(np.float32)
    row_band_done = done.any(axis=1)
    col_band_done = done.any(axis=0)
    sides = {
        "row": (row_bits, row_bytes, row_labels, n_rows, row_band_done),
        "col": (col_bits, col_bytes, col_labels, n_cols, col_band_done),
    }
    for side, (bits, n_bytes, labels, n, band_done) in sides.items():
        known = np.repeat(band_done, tile)[:n]
        group.create_array(
            f"{side}_bits", shape=(n,), chunks=(tile,), dtype="float32", fill_value=np.nan
        )[:] = np.where(known, bits, np.nan).astype(np.float32)
        sizes = np.full(n, 100, dtype=np.int64) if n_bytes is None else np.asarray(n_bytes)
        group.create_array(f"{side}_bytes", shape=(n,), chunks=(tile,), dtype="int64")[:] = sizes
        group.create_array(f"{side}_ids", shape=(n,), dtype=str)[:] = np.array(
            [f"{side}{i}" for i in range(n)], dtype=str
        )
        if labels is not None:
            values = np.asarray(labels)
            dtype = "int64" if values.dtype.kind in "iu" else str
            group.create_array(f"{side}_labels", shape=(n,), dtype=dtype)[:] = values
    markers = group.create_array(
        "tiles_done", shape=grid, chunks=(1, 1), dtype="bool", fill_value=False
    )
    markers[:] = done
    group.attrs.update(
        {
            "variant": variant,
            "tile": tile,
            "square": square,
            "config": {"compressor": compressor or {"compressor": "synthetic"}},
            "progress": {},
            "failed_tiles": {},
            "software": {},
            "format": "nncd-matrix/1",
        }
    )
    return str(path)


def synthetic_bits(
    n_rows: int, n_cols: int, *, seed: int, square: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_bits, col_bits, pair_bits) with plausible values: C(x) in 800-2400 bits and
    max(C(x), C(y)) < C(xy) < C(x) + C(y)."""
    rng = np.random.default_rng(seed)
    row_bits = rng.uniform(800, 2400, n_rows).round()
    col_bits = row_bits.copy() if square else rng.uniform(800, 2400, n_cols).round()
    low = np.maximum(row_bits[:, None], col_bits[None, :])
    high = row_bits[:, None] + col_bits[None, :]
    pair_bits = (low + rng.uniform(0.2, 0.95, (n_rows, n_cols)) * (high - low)).round()
    return row_bits, col_bits, pair_bits

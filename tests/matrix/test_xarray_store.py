"""xarray opens a matrix store as it is (issue 20, defect 8): named dimensions on every array and
the ids and labels as coordinates. On c8ebf8c ``xarray.open_zarr`` failed for want of
``dimension_names``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from engine_helpers import corpus

from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.scorers import ScorerSpec


def test_xarray_opens_a_finished_store_with_ids_and_labels(tmp_path: Path) -> None:
    rows, cols = corpus(9, "q"), corpus(6, "r")
    path = str(tmp_path / "m.zarr")
    compute_matrix(
        MatrixConfig(
            store=path,
            scorer=ScorerSpec(name="gzip"),
            tile=4,
            executor="local",
            progress=False,
            variant="ncd-min",
        ),
        rows,
        cols,
    )
    dataset = xr.open_zarr(path, consolidated=False)
    pair_bits = dataset["pair_bits"]
    assert pair_bits.dims == ("row", "col") and pair_bits.shape == (9, 6)
    assert dataset["pair_bits_reversed"].dims == ("row", "col")
    assert dataset["tiles_done"].dims == ("tile_row", "tile_col")
    assert bool(dataset["tiles_done"].all())
    assert list(pair_bits.coords["row_ids"].values) == list(rows.ids)
    assert list(pair_bits.coords["col_labels"].values) == list(cols.labels or ())
    # one value: C(q3 r5) in bits, found by id, equals what the project's own reader gives
    value = pair_bits.swap_dims(row="row_ids", col="col_ids").sel(row_ids="q3", col_ids="r5")
    expected = StoreReader(MatrixStore.open(path)).rows("pair_bits", 3, 4)[0, 5]
    assert float(value) == float(expected) and np.isfinite(expected) and expected > 0
    assert dataset["row_bits"].attrs["units"] == "bits"

"""The tile edge when none is given: the resumed store's own, else sized for where scoring runs
(64 documents on CPUs, 128 on GPUs, where a tile must outlast the host's work between tiles)."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_helpers import corpus

from nncd_ray import MatrixConfig, ScorerSpec, compute_matrix
from nncd_ray.errors import StoreMismatch
from nncd_ray.matrix.config import DEFAULT_TILE, GPU_TILE
from nncd_ray.matrix.engine import default_tile
from nncd_ray.matrix.store.matrix_store import MatrixStore

SPEC = ScorerSpec(name="synthetic")


def test_default_tile_follows_the_device() -> None:
    config = MatrixConfig(store="unused", scorer=SPEC)
    assert config.tile is None
    assert default_tile(config, on_gpus=False).tile == DEFAULT_TILE == 64
    assert default_tile(config, on_gpus=True).tile == GPU_TILE == 128
    explicit = MatrixConfig(store="unused", scorer=SPEC, tile=32)
    assert default_tile(explicit, on_gpus=True).tile == 32


def test_cpu_job_gets_the_cpu_tile_and_a_resume_keeps_the_stores(tmp_path: Path) -> None:
    rows, cols = corpus(70, "q"), corpus(10, "r")
    store = str(tmp_path / "m.zarr")
    summary = compute_matrix(
        MatrixConfig(store=store, scorer=SPEC, executor="local", progress=False), rows, cols
    )
    assert MatrixStore.existing_tile(store) == DEFAULT_TILE and summary.tiles_total == 2
    small = str(tmp_path / "small.zarr")
    local = {"scorer": SPEC, "executor": "local", "progress": False}
    compute_matrix(MatrixConfig(store=small, tile=8, **local), rows, cols)
    # no --tile on resume: the store's 8, so nothing is refused and nothing recomputed
    again = compute_matrix(MatrixConfig(store=small, **local), rows, cols)
    assert again.tiles_computed == 0 and again.tiles_total == 9 * 2
    with pytest.raises(StoreMismatch, match="tile"):
        compute_matrix(MatrixConfig(store=small, tile=16, **local), rows, cols)
    assert MatrixStore.existing_tile(str(tmp_path / "none.zarr")) is None

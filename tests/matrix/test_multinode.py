"""A job on a 3-node Ray cluster (ray.cluster_utils.Cluster on this machine) uses several nodes."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from engine_helpers import assert_store_matches, corpus

from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.scorers import ScorerSpec

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[str]:
    import ray
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="nncd-m-", dir="/tmp")
    # Cluster writes its address to /tmp/ray/ray_current_cluster, where any plain ray.init() on
    # this machine would find it (and later find a dead address): keep it out of there
    with mock.patch("ray._private.utils.write_ray_address"):
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "temp_dir": temp_dir, "include_dashboard": False},
        )
        try:
            for _ in range(2):
                cluster.add_node(num_cpus=1, temp_dir=temp_dir)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level=logging.WARNING)
            yield cluster.address
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def test_tiles_run_on_several_nodes(three_nodes: str, tmp_path: Path) -> None:
    import ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    rows, cols = corpus(24, "q"), corpus(18, "r")
    # a slow scorer, so that every actor gets tiles before the job ends
    spec = ScorerSpec(name="synthetic", options={"delay_s": 0.2})
    store = tmp_path / "multi.zarr"
    summary = compute_matrix(
        MatrixConfig(store=str(store), scorer=spec, tile=6, actors=3, progress=False), rows, cols
    )
    assert summary.tiles_computed == 12
    assert len(summary.nodes) >= 2, summary.nodes
    assert sum(summary.nodes.values()) == 12
    assert MatrixStore.open(str(store)).progress["nodes"] == summary.nodes
    assert_store_matches(str(store), spec, rows, cols)

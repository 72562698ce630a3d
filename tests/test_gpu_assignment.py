"""GPUs assigned honestly (issue 19): with ``--gpus-per-actor auto`` (the default) every LM actor on
a GPU cluster gets a GPU of its own, and an actor with no GPU sees none.

No GPU is needed: Ray accepts GPUs declared on a CPU machine (``num_gpus=2``), assigns their ids
and sets ``CUDA_VISIBLE_DEVICES`` exactly as on a GPU node. The cluster is started with
``CUDA_VISIBLE_DEVICES=0,1`` in its environment, as a GPU node's processes would see every GPU; an
actor that Ray gives no GPU then sees both unless the executor hides them (Ray 2.60, issue 54868).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import corpus

from nncd_ray import MatrixConfig, compute_matrix
from nncd_ray.errors import ConfigError
from nncd_ray.matrix.cluster.executor import RayExecutor
from nncd_ray.matrix.cluster.gpu_assignment import (
    AUTO,
    actor_runtime_env,
    check_gpu_request,
    parse_gpus_per_actor,
    resolve_gpus_per_actor,
)
from nncd_ray.scorers import ScorerSpec

LM_AUTO = ScorerSpec(name="lm", options={})
LM_CUDA = ScorerSpec(name="lm", options={"device": "cuda"})
LM_CPU = ScorerSpec(name="lm", options={"device": "cpu"})
GZIP = ScorerSpec(name="gzip", options={})
SYNTHETIC = ScorerSpec(name="synthetic", options={})


# -- the rule, without Ray ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "spec", "cluster_gpus", "expected"),
    [
        (AUTO, LM_AUTO, 8.0, 1.0),  # an LM on a GPU cluster: one GPU each
        (AUTO, LM_AUTO, 0.0, 0.0),  # no GPUs: score on CPUs
        (AUTO, LM_CUDA, 0.0, 1.0),  # cuda asked for: ask Ray, which then says there are none
        (AUTO, LM_CPU, 8.0, 0.0),
        (AUTO, GZIP, 8.0, 0.0),  # classical compressors never use a GPU
        (0.5, LM_AUTO, 8.0, 0.5),  # an explicit number is taken as given
        (2.0, GZIP, 8.0, 2.0),
    ],
)
def test_gpus_per_actor_resolution(
    requested: float | str, spec: ScorerSpec, cluster_gpus: float, expected: float
) -> None:
    assert resolve_gpus_per_actor(requested, spec, cluster_gpus) == expected


def test_device_cuda_without_gpus_is_refused() -> None:
    with pytest.raises(ConfigError, match="--device cuda with --gpus-per-actor 0"):
        check_gpu_request(0.0, LM_CUDA)
    with pytest.raises(ConfigError, match="--device cuda with --gpus-per-actor 0"):
        MatrixConfig(store="x.zarr", scorer=LM_CUDA, gpus_per_actor=0.0).validate()
    with pytest.raises(ConfigError, match="must not be negative"):
        check_gpu_request(-1.0, LM_AUTO)
    with pytest.raises(ConfigError, match="neither 'auto' nor a number"):
        parse_gpus_per_actor("many")
    assert parse_gpus_per_actor("AUTO") == AUTO and parse_gpus_per_actor("0.25") == 0.25
    # the in-process executor has no actors: nothing to refuse
    MatrixConfig(store="x.zarr", scorer=LM_CUDA, gpus_per_actor=0.0, executor="local").validate()


def test_zero_gpu_actors_get_an_environment_without_gpus() -> None:
    assert actor_runtime_env(0.0) == {
        "env_vars": {"CUDA_VISIBLE_DEVICES": "", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
    }
    assert actor_runtime_env(1.0) is None and actor_runtime_env(0.5) is None


def test_cli_default_is_auto() -> None:
    from nncd_ray.cli.main import build_parser

    args = build_parser().parse_args(["matrix", "--input", "d.jsonl", "--store", "m.zarr"])
    assert args.gpus_per_actor == AUTO
    args = build_parser().parse_args(
        ["matrix", "--input", "d.jsonl", "--store", "m.zarr", "--gpus-per-actor", "0"]
    )
    assert args.gpus_per_actor == 0.0


# -- on a cluster with two declared GPUs ----------------------------------------------------------


@pytest.fixture(scope="module")
def two_gpu_cluster() -> Iterator[None]:
    import ray

    temp_dir = tempfile.mkdtemp(prefix="nncd-g-", dir="/tmp")
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"  # what every process of a 2-GPU node sees
    try:
        ray.init(
            address="local",
            num_cpus=2,
            num_gpus=2,
            include_dashboard=False,
            _temp_dir=temp_dir,
            logging_level=logging.WARNING,
        )
        yield
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
        shutil.rmtree(temp_dir, ignore_errors=True)


def _probe_class() -> Any:
    import ray

    @ray.remote
    class Probe:
        """What a scorer actor started with the same options would see."""

        def report(self) -> dict[str, Any]:
            return {
                "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            }

    return Probe


def _probe(executor: RayExecutor, count: int) -> list[dict[str, Any]]:
    import ray

    probe = _probe_class()
    actors = [probe.options(**executor.actor_options()).remote() for _ in range(count)]
    try:
        return list(ray.get([actor.report.remote() for actor in actors], timeout=120))
    finally:
        for actor in actors:
            ray.kill(actor)


@pytest.mark.ray
def test_lm_actors_get_distinct_gpus_by_default(two_gpu_cluster: None, tmp_path: Path) -> None:
    # the LM's options only: no model is loaded, the probe actors take the executor's options
    config = MatrixConfig(store=str(tmp_path / "m.zarr"), scorer=LM_AUTO, actors=2)
    with RayExecutor(config, corpus(4, "q"), None) as executor:
        assert executor.resolve_gpus() == 1.0
        seen = _probe(executor, 2)
    assert sorted(tuple(report["gpu_ids"]) for report in seen) == [("0",), ("1",)]
    assert sorted(report["cuda_visible_devices"] for report in seen) == ["0", "1"]


@pytest.mark.ray
def test_actors_without_gpus_see_none(two_gpu_cluster: None, tmp_path: Path) -> None:
    config = MatrixConfig(store=str(tmp_path / "m.zarr"), scorer=GZIP, actors=2)
    with RayExecutor(config, corpus(4, "q"), None) as executor:
        assert executor.resolve_gpus() == 0.0
        seen = _probe(executor, 2)
    # without the hiding environment both would report "0,1": every GPU of the node
    assert all(report == {"gpu_ids": [], "cuda_visible_devices": ""} for report in seen)


@pytest.mark.ray
def test_scorer_actors_report_their_gpus(two_gpu_cluster: None, tmp_path: Path) -> None:
    rows = corpus(8, "q")
    spec = ScorerSpec(name="synthetic", options={"delay_s": 0.2})
    config = MatrixConfig(
        store=str(tmp_path / "g.zarr"), scorer=spec, tile=4, actors=2, gpus_per_actor=1.0
    )
    with RayExecutor(config, rows, None) as executor:
        executor.start()
        assert executor.wait_for_actors(timeout_s=120) == 2
    gpus = sorted(tuple(info["gpu_ids"]) for info in executor.actor_info)
    assert gpus == [("0",), ("1",)]
    # the whole job, default GPUs: the synthetic scorer gets none and sees none
    summary = compute_matrix(
        MatrixConfig(store=str(tmp_path / "d.zarr"), scorer=SYNTHETIC, tile=4, progress=False),
        rows,
    )
    assert summary.tiles_computed == 4

"""cluster/local_cluster.py: a head and two worker nodes on this machine, a matrix job whose tiles
land on several of them, and a ``stop`` that ends this cluster's processes and nothing else.

The cluster is stopped in the fixture's ``finally`` (by the script, then directly by temp dir in
case the script itself is what broke), so a failing test leaves no Ray process behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from paths import ROOT

SCRIPT = ROOT / "cluster" / "local_cluster.py"
DATA = ROOT.parent / "shared" / "data" / "agnews" / "test.csv"
WORKERS = 2


def load_local_cluster() -> ModuleType:
    name = "nncd_local_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    # the nodes' workers import nncd_ray: from the checkout when it is not pip-installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class Cluster:
    directory: Path
    info: dict[str, Any]
    start_output: str


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    module = load_local_cluster()
    directory = Path(tempfile.mkdtemp(prefix="nncd-lc-", dir="/tmp"))  # short: socket paths
    try:
        started = script(
            "start",
            "--dir",
            str(directory),
            "--workers",
            str(WORKERS),
            "--cpus",
            "1",
            "--object-store-mb",
            "128",
            timeout=300,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        info = json.loads((directory / "cluster.json").read_text())
        yield Cluster(directory=directory, info=info, start_output=started.stdout)
    finally:
        script("stop", "--dir", str(directory), "--grace", "3", timeout=120)
        module.stop_processes(directory / "ray", grace_s=3)
        left = module.cluster_processes(directory / "ray")
        shutil.rmtree(directory, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


@pytest.mark.ray
def test_start_reports_addresses_and_a_private_token(cluster: Cluster) -> None:
    info = cluster.info
    assert info["nodes"] == ["head", "worker-1", "worker-2"]
    for text in (info["gcs_address"], info["dashboard_url"], info["token_path"]):
        assert text in cluster.start_output
    token = Path(info["token_path"])
    assert token.parent == cluster.directory
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64

    env = script("env", "--dir", str(cluster.directory))
    assert env.returncode == 0
    assert f"export RAY_ADDRESS={info['gcs_address']}" in env.stdout
    assert "export RAY_AUTH_MODE=token" in env.stdout
    assert f"export RAY_AUTH_TOKEN_PATH={token}" in env.stdout

    status = script("status", "--dir", str(cluster.directory))
    assert status.returncode == 0, status.stderr
    assert f"{WORKERS + 1} nodes alive" in status.stdout
    assert status.stdout.count(" worker ") == WORKERS and status.stdout.count(" head ") == 1


@pytest.mark.ray
def test_matrix_tiles_land_on_several_nodes(cluster: Cluster, tmp_path: Path) -> None:
    """One actor per node (1 CPU each, 3 actors), a slow synthetic scorer so that no actor can
    drain the queue before the others start: the engine's per-tile node ids must show the spread."""
    import zarr

    if not DATA.exists():
        pytest.skip(f"AG News test set not found at {DATA}")
    module = load_local_cluster()
    info = cluster.info
    store, summary_path = tmp_path / "spread.zarr", tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=info["token_path"])
    command = [
        sys.executable,
        str(ROOT / "jobs" / "matrix.py"),
        "--protocol",
        "agnews-small",
        "--data",
        str(DATA),
        "--compressor",
        "synthetic",
        "--scorer-option",
        "delay_s=0.25",
        "--tile",
        "32",
        "--actors",
        str(WORKERS + 1),
        "--address",
        info["gcs_address"],
        "--store",
        str(store),
        "--json",
        str(summary_path),
    ]
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["tiles_computed"] == summary["tiles_total"] == 7 * 4  # 200 x 100 in 32s

    alive = {
        node["node_id"]: node
        for node in module.alive_nodes(info["dashboard_url"], info["token_path"])
    }
    nodes: dict[str, int] = summary["nodes"]
    assert set(nodes) <= set(alive), "tiles reported on nodes that are not this cluster's"
    assert len(nodes) >= 2, f"every tile ran on one node: {nodes}"
    assert any(not alive[node_id]["is_head_node"] for node_id in nodes)
    assert sum(nodes.values()) == summary["tiles_total"]
    # the store keeps the same per-node counts, for `nncd status`
    progress: dict[str, Any] = dict(zarr.open_group(str(store), mode="r").attrs)["progress"]  # type: ignore[assignment]
    assert progress["nodes"] == nodes


@pytest.mark.ray
def test_stop_ends_this_cluster_and_nothing_else(cluster: Cluster) -> None:
    module = load_local_cluster()
    temp_dir = cluster.directory / "ray"
    assert len(module.cluster_processes(temp_dir)) >= 3 * (WORKERS + 1)  # raylet, agents, ...
    # a bystander whose command line names a sibling of the temp dir must survive the stop
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", f"--temp-dir={temp_dir}-other"]
    )
    try:
        stopped = script("stop", "--dir", str(cluster.directory), "--grace", "3", timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert module.cluster_processes(temp_dir) == []
        assert bystander.poll() is None, "stop ended a process of another cluster"
        assert not (cluster.directory / "cluster.json").exists()
        again = script("stop", "--dir", str(cluster.directory))
        assert again.returncode == 0 and "stopped 0 processes" in again.stdout
        status = script("status", "--dir", str(cluster.directory))
        assert status.returncode != 0 and "no cluster started" in status.stderr
    finally:
        bystander.kill()
        bystander.wait(timeout=10)


def test_start_refuses_a_directory_too_long_for_socket_paths(tmp_path: Path) -> None:
    long_dir = tmp_path / ("x" * 60)
    started = time.monotonic()
    done = script("start", "--dir", str(long_dir))
    assert done.returncode != 0 and "too long" in done.stderr
    assert not long_dir.exists()
    assert time.monotonic() - started < 60  # refused before any node is started


def test_names_dir_matches_the_temp_dir_and_its_children_only() -> None:
    names_dir = load_local_cluster()._names_dir
    temp = "/tmp/nncd-x/ray"
    assert names_dir([f"--temp-dir={temp}"], temp)
    assert names_dir(["raylet", f"--session_dir={temp}/session_1"], temp)
    assert names_dir([temp], temp)
    assert not names_dir([f"--temp-dir={temp}-other"], temp)
    assert not names_dir([f"--temp-dir={temp}2/session"], temp)
    assert not names_dir(["python", "-c", "pass"], temp)

"""Chaos: one matrix job on a 3-node Ray cluster survives, in one run, an actor killed, a worker
node killed, its driver SIGKILLed and resumed, and a corrupted chunk healed by the re-run; it ends
equal to a clean run, with no process left (issue 20).

The cluster is ``ray.cluster_utils.Cluster`` (a head and two worker nodes on this machine, 1 CPU
each, one temp dir); the drivers are ``nncd matrix`` processes that join it by address, so that
killing one leaves the cluster up. Faults are injected when the store shows enough tiles done.
The test prints its figures (faults, tiles recomputed, equality, wall time) for the README.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from engine_helpers import assert_store_matches, corpus, tile_calls
from paths import ROOT

from nncd_ray.cli.main import main
from nncd_ray.data.corpus import Corpus
from nncd_ray.matrix.cluster.reaper import cluster_pids
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.scorers import ScorerSpec

# 48-51 s for the module on 2 busy cores (cluster start included): in the default run
pytestmark = pytest.mark.ray

ROWS, COLS, TILE = 64, 48, 8
TILES = (ROWS // TILE) * (COLS // TILE)  # 8 x 6 = 48
# seconds per tile: the job must outlast the fault injection on a busy machine (the node's death
# takes a few seconds to be noticed)
DELAY_S = 1.0
SYNTHETIC = ScorerSpec(name="synthetic", options={})


@dataclass
class ThreeNodes:
    cluster: Any
    temp_dir: str
    address: str


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[ThreeNodes]:
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="nncd-c-", dir="/tmp")
    # node deaths noticed within ~3 s instead of Ray's default ~30 s
    system_config = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    # Cluster writes its address where any plain ray.init() of this machine would find it
    with mock.patch("ray._private.utils.write_ray_address"):
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "temp_dir": temp_dir,
                "include_dashboard": False,
                "_system_config": system_config,
            },
        )
        try:
            for _ in range(2):
                cluster.add_node(num_cpus=1, temp_dir=temp_dir)
            cluster.wait_for_nodes()
            yield ThreeNodes(cluster=cluster, temp_dir=temp_dir, address=cluster.address)
        finally:
            cluster.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def write_jsonl(path: Path, docs: Corpus) -> None:
    with path.open("w") as out:
        for doc_id, text in zip(docs.ids, docs.texts, strict=True):
            out.write(json.dumps({"id": doc_id, "text": text}) + "\n")


def tiles_done(store: Path) -> int:
    if not (store / "zarr.json").exists():
        return 0
    try:
        return MatrixStore.open(str(store)).tiles_done()
    except Exception:  # being created, or a marker being written right now
        return 0


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
        time.sleep(0.2)


def scorer_actor_pids(temp_dir: str) -> list[int]:
    """Live ``ray::ScorerActor`` processes of this cluster (found by its temp dir)."""
    found = []
    for pid in cluster_pids(temp_dir):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode().strip()
        except OSError:
            continue
        if name.startswith("ray::ScorerActor"):
            found.append(pid)
    return found


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


def node_with_an_actor(cluster: Any, temp_dir: str) -> Any:
    """A worker node (not the head) whose raylet is the parent of a live scorer actor."""
    parents = set()
    for pid in scorer_actor_pids(temp_dir):
        try:
            parents.add(parent_pid(pid))
        except OSError:
            continue
    for node in cluster.worker_nodes:
        raylet = node.all_processes["raylet"][0].process.pid
        if raylet in parents:
            return node
    return None


def actor_deaths_seen(stderr_file: Path) -> int:
    """Tile attempts the driver lost with their actors, from its log on stderr."""
    return sum("failed: actor" in line for line in stderr_file.read_text().splitlines())


def corrupt_chunk(store: Path) -> str:
    """Flip one byte in the middle of a done tile's ``pair_bits`` chunk; return the tile key."""
    done = MatrixStore.open(str(store)).done_mask()
    rows, cols = done.nonzero()
    key = f"{int(rows[0])},{int(cols[0])}"
    chunk = store / "pair_bits" / "c" / str(int(rows[0])) / str(int(cols[0]))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    return key


def test_one_job_survives_every_fault(three_nodes: ThreeNodes, tmp_path: Path) -> None:
    started = time.monotonic()
    rows, cols = corpus(ROWS, "q", labels=False), corpus(COLS, "r", labels=False)
    write_jsonl(tmp_path / "q.jsonl", rows)
    write_jsonl(tmp_path / "r.jsonl", cols)
    store, calls = tmp_path / "chaos.zarr", tmp_path / "calls"
    command = [
        sys.executable, "-m", "nncd_ray.cli.main", "matrix",
        "--queries", str(tmp_path / "q.jsonl"), "--refs", str(tmp_path / "r.jsonl"),
        "--store", str(store), "--tile", str(TILE), "--actors", "3",
        "--address", three_nodes.address, "--compressor", "synthetic", "--no-progress",
        "--scorer-option", f"delay_s={DELAY_S}", "--scorer-option", f"call_dir={calls}",
        "--actor-timeout", "120",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    faults: list[str] = []

    log = tmp_path / "driver1.stderr"
    with log.open("w") as stderr:
        driver = subprocess.Popen(command, env=env, stderr=stderr, text=True)
    try:
        # 1. an actor killed (SIGKILL of its worker process), its tile retried by another
        wait_for(lambda: tiles_done(store) >= 3, 120, "3 tiles done")
        wait_for(lambda: len(scorer_actor_pids(three_nodes.temp_dir)) >= 3, 60, "3 actors")
        os.kill(scorer_actor_pids(three_nodes.temp_dir)[0], signal.SIGKILL)
        faults.append("actor killed")
        wait_for(lambda: actor_deaths_seen(log) >= 1, 60, "the driver to see the actor die")
        # 2. a worker node that hosts an actor killed (its raylet and every process on it)
        wait_for(lambda: tiles_done(store) >= 8, 120, "8 tiles done")
        node: Any = None

        def found() -> bool:
            nonlocal node
            node = node_with_an_actor(three_nodes.cluster, three_nodes.temp_dir)
            return node is not None

        wait_for(found, 60, "an actor on a worker node")
        three_nodes.cluster.remove_node(node, allow_graceful=False)
        faults.append("worker node killed")
        wait_for(lambda: actor_deaths_seen(log) >= 2, 120, "the driver to see the node die")
        # 3. the driver SIGKILLed mid-job, at once
        assert driver.poll() is None, log.read_text()
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert driver.returncode == -signal.SIGKILL, log.read_text()
    faults.append("driver SIGKILLed")
    lost = actor_deaths_seen(log)
    marked = MatrixStore.open(str(store)).tiles_done()
    assert 8 <= marked < TILES
    # 4. a corrupted chunk of a done tile
    healed_key = corrupt_chunk(store)
    faults.append("chunk corrupted")

    # resume: the same command, to the end
    resumed = subprocess.run(
        [*command, "--json", str(tmp_path / "resumed.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((tmp_path / "resumed.json").read_text())
    assert summary["tiles_total"] == TILES
    assert set(summary["tiles_reverified"]) == {healed_key}, summary
    assert summary["tiles_computed"] == TILES - marked + 1

    # equal to a clean run: every float of the store equals in-process scoring of the same pairs
    assert_store_matches(str(store), SYNTHETIC, rows, cols)
    assert main(["status", "--store", str(store), "--verify"]) == 0
    # every tile scored to the end once, plus those scored again: the healed one, and any whose
    # data was written but whose marker was not when the driver died
    counts = tile_calls(calls, rows, cols, tile=TILE)
    assert set(counts) == {(r, c) for r in range(ROWS // TILE) for c in range(COLS // TILE)}
    recomputed = sum(counts.values()) - TILES
    assert recomputed >= 1
    # no process of the drivers' jobs is left on the cluster (actors of dead drivers included)
    wait_for(lambda: not scorer_actor_pids(three_nodes.temp_dir), 60, "actors to end")
    figures = {
        "faults": faults,
        "tiles": TILES,
        "tiles_done_before_resume": marked,
        "attempts_lost_to_kills": lost,
        "tiles_scored_twice": recomputed,
        "healed": healed_key,
        "equal_to_clean": True,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    logging.getLogger(__name__).warning("chaos figures: %s", json.dumps(figures))
    print(f"chaos figures: {json.dumps(figures)}")


def test_no_process_left_after_shutdown(three_nodes: ThreeNodes) -> None:
    # runs after the chaos test (same module cluster): shut it down here and look for survivors
    three_nodes.cluster.shutdown()
    wait_for(lambda: not cluster_pids(three_nodes.temp_dir), 60, "the cluster's processes to end")

"""A private Ray cluster dies with its driver (issue 20, defect 3), and is quiet (defect 10).

Processes of a cluster are found by its temp dir (command line, open files, working directory:
:func:`nncd_ray.matrix.cluster.reaper.cluster_pids`), so these tests only ever look at, and in their
cleanup only ever end, processes of the clusters they started themselves. Each test gives its
drivers a parent directory of their own through ``$NNCD_RAY_TMPDIR``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import corpus
from paths import ROOT

from nncd_ray.matrix.cluster.private_cluster import TMPDIR_ENV
from nncd_ray.matrix.cluster.reaper import cluster_pids, end_cluster

# Ray's socket paths must stay short: the drivers' temp dirs go under /tmp
SHORT_TMP = "/tmp"


@pytest.fixture
def ray_parent() -> Iterator[Path]:
    """A parent directory for the private clusters of one test; leftovers are ended afterwards."""
    parent = Path(tempfile.mkdtemp(prefix="nncd-dd-", dir=SHORT_TMP))
    try:
        yield parent
    finally:
        for directory in parent.iterdir():
            end_cluster(str(directory))
        shutil.rmtree(parent, ignore_errors=True)


def driver_env(parent: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env[TMPDIR_ENV] = str(parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def write_jsonl(path: Path, n: int) -> None:
    docs = corpus(n, "d")
    with path.open("w") as out:
        for doc_id, text in zip(docs.ids, docs.texts, strict=True):
            out.write(json.dumps({"id": doc_id, "text": text}) + "\n")


def alive(pid: int) -> bool:
    """Running (a zombie has ended; only its exit status waits to be collected)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def process_names(pids: list[int]) -> set[str]:
    """First command-line word of each live process (Ray renames its workers ``ray::…``)."""
    names = set()
    for pid in pids:
        try:
            names.add(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode().strip())
        except OSError:
            continue
    return names


def wait_until(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.3)


# -- the watchdog on its own (no Ray) ------------------------------------------------------------


def test_end_cluster_ends_only_the_processes_of_its_directory(tmp_path: Path) -> None:
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    inside = [
        subprocess.Popen(["sleep", "120"], cwd=mine),  # working directory inside
        subprocess.Popen([sys.executable, "-c", stubborn], cwd=mine),  # ignores SIGTERM
        # names the directory on its command line, as the GCS and the raylet do
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--dir={mine}"]),
    ]
    outside = subprocess.Popen(["sleep", "120"], cwd=other)
    try:
        wait_until(lambda: len(cluster_pids(str(mine))) == 3, 10, "the processes to start")
        assert cluster_pids(str(other)) == [outside.pid]
        assert end_cluster(str(mine)) == 3
        for process in inside:
            assert process.wait(timeout=10) is not None
        assert outside.poll() is None  # another directory's process is left alone
    finally:
        for process in (*inside, outside):
            process.kill()
            process.wait()


def test_watchdog_ends_the_cluster_when_its_driver_is_sigkilled(ray_parent: Path) -> None:
    # a stand-in driver: starts the watchdog for a directory, then a "cluster process" in it
    driver_code = textwrap.dedent(
        f"""
        import subprocess, sys, tempfile, time
        from nncd_ray.matrix.cluster.private_cluster import Watchdog
        directory = tempfile.mkdtemp(prefix="nncd-ray-", dir={str(ray_parent)!r})
        watchdog = Watchdog(directory)
        child = subprocess.Popen(["sleep", "300"], cwd=directory, start_new_session=True)
        print(directory, child.pid, watchdog.process.pid, flush=True)
        time.sleep(300)
        """
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", driver_code],
        stdout=subprocess.PIPE,
        text=True,
        env=driver_env(ray_parent),
    )
    assert driver.stdout is not None
    directory, child, watchdog = driver.stdout.readline().split()
    assert alive(int(child)) and alive(int(watchdog))
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    wait_until(lambda: not Path(directory).exists(), 30, "the watchdog to remove the directory")
    assert cluster_pids(directory) == []
    wait_until(lambda: not alive(int(child)), 10, "the cluster process to end")
    wait_until(lambda: not alive(int(watchdog)), 10, "the watchdog to exit")


# -- a real private cluster ---------------------------------------------------------------------


def _matrix_command(tmp_path: Path, store: str, *options: str) -> list[str]:
    write_jsonl(tmp_path / "d.jsonl", 24)
    return [
        sys.executable, "-m", "nncd_ray.cli.main", "matrix", "--input", str(tmp_path / "d.jsonl"),
        "--store", str(tmp_path / store), "--tile", "4", "--no-progress", *options,
    ]  # fmt: skip


@pytest.mark.ray
def test_clean_run_leaves_no_process_folder_or_auth_warning(
    ray_parent: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        _matrix_command(tmp_path, "g.zarr", "--compressor", "gzip"),
        env=driver_env(ray_parent),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "36 tiles computed" in done.stdout
    assert list(ray_parent.iterdir()) == []  # the session folder is gone when the command returns
    assert "Token authentication" not in done.stderr, done.stderr
    assert done.stderr.strip() == "", done.stderr


@pytest.mark.ray
def test_sigkilled_driver_takes_its_private_cluster_along(ray_parent: Path, tmp_path: Path) -> None:
    store = tmp_path / "k.zarr"
    driver = subprocess.Popen(
        _matrix_command(
            tmp_path, "k.zarr", "--compressor", "synthetic", "--scorer-option", "delay_s=1"
        ),
        env=driver_env(ray_parent),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # running a job: the store exists and the cluster has its workers and agents
        wait_until(lambda: (store / "zarr.json").exists(), 120, "the driver to create its store")
        (directory,) = list(ray_parent.iterdir())
        wait_until(lambda: len(cluster_pids(str(directory))) >= 6, 60, "the cluster's processes")
        names = process_names(cluster_pids(str(directory)))
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
        assert driver.poll() is None
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
    assert driver.returncode == -signal.SIGKILL
    # before the fix the two agents stayed alive (parented to PID 1) and the folder stayed
    wait_until(lambda: not directory.exists(), 60, "the watchdog to remove the session folder")
    assert cluster_pids(str(directory)) == []

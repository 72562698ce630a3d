"""Ray jobs end to end: a real head started with the ``ray start`` CLI (token authentication on),
the matrix job submitted with ``ray job submit --working-dir``, resubmitted with ``nncd submit``
(it resumes: no tile is computed twice), and the k-NN job, whose accuracy must be the published
agnews-small gzip baseline of ``shared/bench/PROTOCOL.md``.

Plus fast unit tests of ``nncd submit`` (argument handling, token lookup, upload excludes) and of
the job entrypoints' ``--help``, which need no cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from paths import ROOT

from nncd_ray.cli.main import main as nncd
from nncd_ray.errors import ConfigError
from nncd_ray.matrix.cluster import submission as jobs

DATA = ROOT.parent / "shared" / "data" / "agnews" / "test.csv"
RAY = str(Path(sys.executable).with_name("ray"))
# agnews-small (200 x 100) in 64-document tiles: 4 x 2
TILES = 8
# PROTOCOL.md, agnews-small, gzip -9: k -> correct of 200 (0.485, 0.465, 0.495, 0.480)
GZIP_BASELINE = {1: 97, 3: 93, 5: 99, 7: 96}
JOB_TIMEOUT_S = 180


def load_local_cluster() -> ModuleType:
    """cluster/local_cluster.py (a script, not a package module): its stop_processes ends exactly
    one cluster's processes, where `ray stop` would end every Ray process on the machine."""
    name = "nncd_local_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "cluster" / "local_cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Ray address or auth setting, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH"))
    }
    # the job's `python` and Ray's own CLI must be this interpreter's, also when the venv that
    # runs the tests was not activated (its bin not on PATH)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


@dataclass(frozen=True)
class Head:
    url: str  # job server
    token_path: Path
    directory: Path

    def client_env(self) -> dict[str, str]:
        """What a user exports for Ray's own CLI: Ray sends the token only in token mode."""
        return clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    if not DATA.exists():
        pytest.skip(f"AG News test set not found at {DATA}")
    local_cluster = load_local_cluster()
    directory = Path(tempfile.mkdtemp(prefix="nncd-j-", dir="/tmp"))  # short: socket paths
    token_path = directory / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    dashboard_port = free_port()
    command = [
        RAY,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        "--num-cpus=2",
        "--num-gpus=0",
        f"--temp-dir={directory / 'ray'}",
        "--include-dashboard=true",  # the job server is part of the dashboard
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        "--dashboard-agent-listen-port=0",
        f"--object-store-memory={256 * 1024 * 1024}",
        "--disable-usage-stats",
    ]
    node_env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    try:
        started = subprocess.run(
            command, env=node_env, capture_output=True, text=True, timeout=180, check=False
        )
        assert started.returncode == 0, started.stdout + started.stderr
        yield Head(
            url=f"http://127.0.0.1:{dashboard_port}", token_path=token_path, directory=directory
        )
    finally:
        local_cluster.stop_processes(directory / "ray", grace_s=3)
        left = local_cluster.cluster_processes(directory / "ray")
        shutil.rmtree(directory, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs")


def matrix_command(store: Path, summary: Path) -> list[str]:
    return [
        "python",
        "jobs/matrix.py",
        "--protocol",
        "agnews-small",
        "--data",
        str(DATA),
        "--compressor",
        "gzip",
        "--store",
        str(store),
        "--actors",
        "2",
        "--json",
        str(summary),
    ]


@pytest.fixture(scope="module")
def first_run(head: Head, work: Path) -> tuple[Path, dict[str, Any]]:
    """The matrix job submitted the way the Ray docs do it: `ray job submit --working-dir .`."""
    store, summary = work / "agnews-small-gzip.zarr", work / "run1.json"
    excludes = json.dumps({"excludes": list(jobs.DEFAULT_EXCLUDES)})
    done = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            head.url,
            "--working-dir",
            str(ROOT),
            "--runtime-env-json",
            excludes,
            "--",
            *matrix_command(store, summary),
        ],
        env=head.client_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return store, json.loads(summary.read_text())


@pytest.mark.ray
def test_matrix_job_computes_every_tile_on_the_cluster(
    first_run: tuple[Path, dict[str, Any]],
) -> None:
    _, summary = first_run
    assert summary["executor"] == "ray"
    assert summary["tiles_total"] == TILES
    assert summary["tiles_computed"] == TILES and summary["tiles_failed"] == 0
    assert summary["pairs_computed"] == 200 * 100
    nodes = summary["nodes"]
    assert isinstance(nodes, dict) and sum(nodes.values()) == TILES
    assert all(len(node_id) == 56 for node_id in nodes)  # Ray node ids (hex), not "local"


@pytest.fixture
def no_ambient_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In-process `nncd submit` sees no token but the one it is given (no env, no ~/.ray)."""
    for name in list(os.environ):
        if name.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(jobs, "DEFAULT_TOKEN_PATH", tmp_path / "no_default_token")


@pytest.mark.ray
@pytest.mark.usefixtures("no_ambient_token")
def test_resubmitted_matrix_job_resumes_with_no_new_tile(
    head: Head,
    work: Path,
    first_run: tuple[Path, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Resubmission through `nncd submit`, with only --token-file (no RAY_AUTH_MODE): the wrapper
    sends the token itself, uploads the working dir and streams the log until the job ends."""
    import zarr

    store, _ = first_run
    summary = work / "run2.json"
    monkeypatch.chdir(ROOT)
    code = nncd(
        [
            "submit",
            "--address",
            head.url,
            "--token-file",
            str(head.token_path),
            "--working-dir",
            ".",
            "--",
            *matrix_command(store, summary),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, out[-3000:] + err[-3000:]
    assert "SUCCEEDED" in err and "0 tiles computed, 8 already done of 8" in out
    second = json.loads(summary.read_text())
    assert second["tiles_computed"] == 0 and second["pairs_computed"] == 0
    assert second["tiles_skipped"] == TILES
    group = zarr.open_group(str(store), mode="r")
    assert bool(np.asarray(zarr.open_array(str(store), path="tiles_done", mode="r")[...]).all())
    progress: dict[str, Any] = dict(group.attrs)["progress"]  # type: ignore[assignment]
    assert progress["runs"] == 2


@pytest.mark.ray
@pytest.mark.usefixtures("no_ambient_token")
def test_knn_job_reproduces_the_gzip_baseline(
    head: Head,
    work: Path,
    first_run: tuple[Path, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Submitted with --no-wait, then followed with `nncd submit status` and `logs`."""
    store, _ = first_run
    report_path = work / "knn.json"
    auth = ["--address", head.url, "--token-file", str(head.token_path)]
    monkeypatch.chdir(ROOT)

    def cli(*words: str) -> tuple[int, str]:
        code = nncd(["submit", *words])
        out, err = capsys.readouterr()
        return code, out + err if code == 2 else out

    knn = ["python", "jobs/knn.py", "--store", str(store), "--json", str(report_path)]
    code, job_id = cli(*auth, "--working-dir", ".", "--no-wait", "--", *knn)
    assert code == 0, job_id
    job_id = job_id.strip()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    code, state = cli("status", job_id, *auth, "--json")
    while code == 3 and time.monotonic() < deadline:  # 3: not finished yet
        time.sleep(0.5)
        code, state = cli("status", job_id, *auth, "--json")
    assert code == 0, state
    assert json.loads(state)["status"] == "SUCCEEDED"
    code, log = cli("logs", job_id, *auth)
    assert code == 0 and "| 1 | 0.485 |" in log, log[-2000:]
    code, listing = cli("list", *auth)
    assert code == 0 and f"{job_id}  SUCCEEDED" in listing

    report = json.loads(report_path.read_text())
    correct = {result["k"]: result["n_correct"] for result in report["results"]}
    assert correct == GZIP_BASELINE
    assert report["n_queries"] == 200 and report["n_refs"] == 100


@pytest.mark.ray
@pytest.mark.usefixtures("no_ambient_token")
def test_stop_ends_a_running_job(head: Head, capsys: pytest.CaptureFixture[str]) -> None:
    auth = ["--address", head.url, "--token-file", str(head.token_path)]
    sleeper = ["python", "-c", "import time; print('started', flush=True); time.sleep(300)"]
    assert nncd(["submit", *auth, "--no-wait", "--", *sleeper]) == 0
    job_id = capsys.readouterr().out.strip()

    def state() -> tuple[int, str]:
        code = nncd(["submit", "status", job_id, *auth, "--json"])
        return code, json.loads(capsys.readouterr().out)["status"]

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while state() != (3, "RUNNING") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert nncd(["submit", "stop", job_id, *auth]) == 0
    assert "stopping" in capsys.readouterr().out
    while (final := state())[1] != "STOPPED" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert final == (1, "STOPPED")  # status exits 1 for a job that did not succeed


@pytest.mark.ray
@pytest.mark.usefixtures("no_ambient_token")
def test_job_server_refuses_requests_without_the_right_token(
    head: Head, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert nncd(["submit", "list", "--address", head.url]) == 2
    err = capsys.readouterr().err
    assert "needs a token" in err and "no token was found" in err
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    assert nncd(["submit", "list", "--address", head.url, "--token-file", str(wrong)]) == 2
    assert "was refused" in capsys.readouterr().err
    assert (
        nncd(["submit", "--address", head.url, "--token-file", str(head.token_path), "list"]) == 0
    )


# -- no cluster needed -----------------------------------------------------------------------------


@pytest.mark.parametrize("job", ["matrix", "knn", "study"])
def test_job_entrypoints_have_help(job: str, tmp_path: Path) -> None:
    # run from elsewhere, as a job in an uploaded working dir may be: the script finds its package
    done = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--help"],
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=""),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"nncd {job}" in done.stdout


def test_submit_needs_a_separator_before_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert nncd(["submit", "--address", "http://127.0.0.1:1", "python", "jobs/matrix.py"]) == 2
    assert "put -- before the job's command" in capsys.readouterr().err
    assert nncd(["submit"]) == 2
    assert "nothing to do" in capsys.readouterr().err


def test_submit_reports_an_unreachable_job_server(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    code = nncd(["submit", "status", "raysubmit_x", "--address", f"127.0.0.1:{port}"])
    assert code == 2
    assert f"cannot reach the Ray job server at http://127.0.0.1:{port}" in capsys.readouterr().err


def test_token_lookup_follows_rays_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from_file, from_env_path = tmp_path / "given", tmp_path / "env_path"
    from_file.write_text("aaa\n")
    from_env_path.write_text("ccc")
    monkeypatch.setattr(jobs, "DEFAULT_TOKEN_PATH", tmp_path / "absent")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert jobs.find_token() == (None, "none")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(from_env_path))
    assert jobs.find_token()[0] == "ccc"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "bbb")
    assert jobs.find_token()[0] == "bbb"
    assert jobs.find_token(str(from_file))[0] == "aaa"
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        jobs.find_token(str(tmp_path / "empty"))
    connection = jobs.connect("10.1.2.3:8265", str(from_file))
    assert connection.address == "http://10.1.2.3:8265"
    assert connection.headers() == {"Authorization": "Bearer aaa"}
    assert "aaa" not in connection.token_source


def test_address_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert jobs.resolve_address(None) == jobs.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address is not the job server
    assert jobs.resolve_address(None) == jobs.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://head:8265/")
    assert jobs.resolve_address(None) == "http://head:8265"
    assert jobs.resolve_address("https://ray.example.com") == "https://ray.example.com"
    with pytest.raises(ConfigError, match="http"):
        jobs.resolve_address("ray://head:10001")


def test_runtime_env_uploads_the_working_dir_without_heavy_folders(tmp_path: Path) -> None:
    env = jobs.runtime_env(
        working_dir=str(tmp_path), excludes=["data/"], env_vars=jobs.parse_env_vars(["A=1=2"])
    )
    assert env["working_dir"] == str(tmp_path.resolve())
    assert {".git", ".venv", "**/*.zarr"} <= set(env["excludes"]) and "data/" in env["excludes"]
    assert env["env_vars"] == {"A": "1=2"}
    bare = jobs.runtime_env(working_dir=str(tmp_path), default_excludes=False)
    assert "excludes" not in bare
    assert jobs.runtime_env(working_dir=None) == {}
    with pytest.raises(ConfigError, match="not a directory"):
        jobs.runtime_env(working_dir=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="--working-dir"):
        jobs.runtime_env(working_dir=None, excludes=["x"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        jobs.parse_env_vars(["novalue"])

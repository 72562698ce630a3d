#!/usr/bin/env python3
"""A multi-node Ray cluster on one machine: a head and N worker nodes, each its own raylet.

    python cluster/local_cluster.py start --workers 2 --cpus 2      # prints addresses and token
    eval "$(python cluster/local_cluster.py env)"                    # RAY_ADDRESS, auth variables
    nncd submit -- python jobs/matrix.py --protocol agnews-small ...
    python cluster/local_cluster.py status
    python cluster/local_cluster.py stop

Everything lives in one private directory (``--dir``, default ``/tmp/nncd-ray-<uid>``): the
cluster's auth token (``auth_token``, mode 600), its Ray temp dir (``ray/``: sessions, logs,
sockets), the ``ray start`` logs and ``cluster.json`` (addresses). Token authentication is on:
every node starts with ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` pointing at that file,
and every client needs the same two variables (``env`` prints them).

``stop`` ends exactly this cluster's processes: those whose command line names its temp dir
(raylets, GCS, dashboard, monitors) and their descendants (workers, agents, job drivers).
``ray stop`` would end every Ray process of the machine, other clusters' included.

Several nodes on one machine need distinct ports: the GCS, dashboard and client-server ports are
chosen free, every dashboard agent and node manager gets a random port, and each node gets a
small object store (``--object-store-mb``) so that N nodes do not claim N x 30% of memory.
``--gpus-per-worker G`` gives worker i the GPUs i*G .. i*G+G-1 (``CUDA_VISIBLE_DEVICES``).
Runs with the ``ray`` of this Python environment, which is then also the jobs' Python.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Ray's sockets live under <dir>/ray/session_<timestamp>_<pid>/sockets/plasma_store.N; Unix socket
# paths are limited to 107 bytes, which leaves about this much for the directory itself.
MAX_DIR_CHARS = 40
NODE_TIMEOUT_S = 90.0
STOP_GRACE_S = 10.0


@dataclass(frozen=True, kw_only=True)
class ClusterInfo:
    """What ``start`` wrote to ``cluster.json``: how to reach the cluster."""

    # GCS address ("127.0.0.1:PORT"): RAY_ADDRESS for drivers and `ray start --address`
    gcs_address: str
    # job server / dashboard URL: `ray job submit --address`, `nncd submit --address`
    dashboard_url: str
    # file holding the auth token ("" when started with --no-auth)
    token_path: str
    # Ray's --temp-dir of every node
    temp_dir: str
    # node names, head first
    nodes: list[str]
    python: str


def default_dir() -> Path:
    return Path(os.environ.get("NNCD_CLUSTER_DIR") or f"/tmp/nncd-ray-{os.getuid()}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ray_cli() -> str:
    """The ``ray`` script of the environment running this file (so jobs use this Python)."""
    beside = Path(sys.executable).with_name("ray")
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        sys.exit("error: no `ray` command in this environment; pip install 'ray[default]'")
    return found


def info_path(directory: Path) -> Path:
    return directory / "cluster.json"


def read_info(directory: Path) -> ClusterInfo:
    path = info_path(directory)
    try:
        return ClusterInfo(**json.loads(path.read_text()))
    except FileNotFoundError:
        sys.exit(f"error: no cluster started in {directory} ({path} is missing)")


def client_env(info: ClusterInfo) -> dict[str, str]:
    """Variables a client on this machine needs: drivers, `ray job`, `nncd submit`."""
    env = {"RAY_ADDRESS": info.gcs_address, "RAY_API_SERVER_ADDRESS": info.dashboard_url}
    if info.token_path:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=info.token_path)
    return env


def node_env(token_path: Path | None, cuda_devices: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(name, None)  # another cluster's settings must not leak into this one
    if token_path is None:
        env["RAY_AUTH_MODE"] = "disabled"
        env.pop("RAY_AUTH_TOKEN_PATH", None)
    else:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices
    return env


def run_ray_start(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("w") as out:
        done = subprocess.run(
            [ray_cli(), "start", *args], env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"`ray start` failed (exit {done.returncode}); see {log}:\n{tail}")


def alive_nodes(dashboard_url: str, token_path: str) -> list[dict[str, Any]]:
    """The cluster's ALIVE nodes from the state API ([] while the dashboard is not up)."""
    request = urllib.request.Request(f"{dashboard_url}/api/v0/nodes?limit=1000&detail=false")
    if token_path:
        token = Path(token_path).read_text().strip()
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return []
    nodes = payload.get("data", {}).get("result", {}).get("result", [])
    return [node for node in nodes if node.get("state") == "ALIVE"]


def wait_for_nodes(info: ClusterInfo, count: int, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    nodes: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        nodes = alive_nodes(info.dashboard_url, info.token_path)
        if len(nodes) >= count:
            return nodes
        time.sleep(1.0)
    raise RuntimeError(f"only {len(nodes)} of {count} nodes came up within {timeout_s:.0f} s")


def start(ns: argparse.Namespace) -> int:
    directory: Path = ns.dir.resolve()
    if len(str(directory)) > MAX_DIR_CHARS:
        sys.exit(
            f"error: --dir {directory} is too long for Ray's socket paths "
            f"(at most {MAX_DIR_CHARS} characters); use a short path such as /tmp/nncd-ray"
        )
    if info_path(directory).exists() and cluster_processes(directory / "ray"):
        sys.exit(f"error: a cluster from {directory} is running; stop it first")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp_dir = directory / "ray"
    token_path: Path | None = None
    if not ns.no_auth:
        token_path = directory / "auth_token"
        if not token_path.exists():  # keep an existing token: clients may have it already
            token_path.write_text(secrets.token_hex(32))  # Ray's own token format
        token_path.chmod(0o600)

    port = ns.port or free_port()
    dashboard_port = ns.dashboard_port or free_port()
    object_store = str(ns.object_store_mb * 1024 * 1024)
    common = [
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={object_store}",
        "--dashboard-agent-listen-port=0",
        "--disable-usage-stats",
    ]
    info = ClusterInfo(
        gcs_address=f"127.0.0.1:{port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        token_path=str(token_path or ""),
        temp_dir=str(temp_dir),
        nodes=["head"] + [f"worker-{i}" for i in range(1, ns.workers + 1)],
        python=sys.executable,
    )
    head_cpus = ns.cpus if ns.head_cpus is None else ns.head_cpus
    try:
        run_ray_start(
            [
                "--head",
                f"--port={port}",
                f"--num-cpus={head_cpus}",
                "--num-gpus=0",
                "--node-name=head",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                f"--ray-client-server-port={free_port()}",
                *common,
            ],
            node_env(token_path, None),
            directory / "start-head.log",
        )
        for index in range(1, ns.workers + 1):
            gpus = ns.gpus_per_worker
            devices = None
            if gpus:
                first = (index - 1) * gpus
                devices = ",".join(str(d) for d in range(first, first + gpus))
            run_ray_start(
                [
                    f"--address={info.gcs_address}",
                    f"--num-cpus={ns.cpus}",
                    f"--num-gpus={gpus}",
                    f"--node-name=worker-{index}",
                    *common,
                ],
                node_env(token_path, devices),
                directory / f"start-worker-{index}.log",
            )
        info_path(directory).write_text(json.dumps(asdict(info), indent=2) + "\n")
        nodes = wait_for_nodes(info, ns.workers + 1, NODE_TIMEOUT_S)
    except (RuntimeError, KeyboardInterrupt) as exc:
        stopped = stop_processes(temp_dir)
        info_path(directory).unlink(missing_ok=True)
        print(f"error: {exc}\n(stopped the {stopped} processes already started)", file=sys.stderr)
        return 1
    print(f"Ray cluster up: {len(nodes)} nodes ({', '.join(info.nodes)}) in {directory}")
    print(f"  GCS address (drivers):   {info.gcs_address}")
    print(f"  job server / dashboard:  {info.dashboard_url}")
    if info.token_path:
        print(f"  auth token:              {info.token_path}")
    else:
        print("  auth token:              none (started with --no-auth)")
    print('Client environment (or: eval "$(python cluster/local_cluster.py env)"):')
    for name, value in client_env(info).items():
        print(f"  export {name}={value}")
    print(f"Stop with: python cluster/local_cluster.py stop --dir {directory}")
    return 0


def _psutil() -> Any:
    """psutil: installed, or the copy Ray vendors (importing ray puts it on sys.path)."""
    try:
        return importlib.import_module("psutil")
    except ImportError:
        importlib.import_module("ray")
        return importlib.import_module("psutil")


def _names_dir(args: list[str], temp_dir: str) -> bool:
    inside = temp_dir.rstrip("/") + "/"
    return any(arg == temp_dir or arg.endswith("=" + temp_dir) or inside in arg for arg in args)


def cluster_processes(temp_dir: Path) -> list[Any]:
    """This cluster's processes: command line names ``temp_dir``, plus all their descendants."""
    psutil = _psutil()
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            args = proc.info["cmdline"] or []
        except (psutil.Error, KeyError):
            continue
        if proc.pid not in me and _names_dir(args, str(temp_dir)):
            roots.append(proc)
    found: dict[int, Any] = {}
    for root in roots:
        found[root.pid] = root
        try:
            for child in root.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return [proc for pid, proc in found.items() if pid not in me]


def _rank(proc: Any) -> int:
    """Stop order, as `ray stop` does it: raylets first, the GCS last."""
    psutil = _psutil()
    try:
        name = proc.name()
    except psutil.Error:
        return 1
    return 0 if name == "raylet" else 2 if name == "gcs_server" else 1


def stop_processes(temp_dir: Path, grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM this cluster's processes in `ray stop`'s order, then SIGKILL what is left."""
    psutil = _psutil()
    procs = cluster_processes(temp_dir)
    for rank in (0, 1, 2):
        group = [p for p in procs if _rank(p) == rank]
        for proc in group:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                continue
        psutil.wait_procs(group, timeout=grace_s / 3)
    for proc in cluster_processes(temp_dir):  # stragglers, and workers spawned meanwhile
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(procs, timeout=5)
    return len(procs)


def stop(ns: argparse.Namespace) -> int:
    directory: Path = ns.dir.resolve()
    count = stop_processes(directory / "ray", ns.grace)
    info_path(directory).unlink(missing_ok=True)
    left = cluster_processes(directory / "ray")
    if left:
        print(f"error: {len(left)} processes of {directory} are still alive", file=sys.stderr)
        return 1
    if ns.purge:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"stopped {count} processes of the cluster in {directory}")
    return 0


def status(ns: argparse.Namespace) -> int:
    info = read_info(ns.dir.resolve())
    nodes = alive_nodes(info.dashboard_url, info.token_path)
    print(f"{len(nodes)} nodes alive at {info.dashboard_url} (GCS {info.gcs_address})")
    for node in sorted(nodes, key=lambda n: (not n.get("is_head_node"), n.get("node_id", ""))):
        resources = node.get("resources_total", {})
        role = "head  " if node.get("is_head_node") else "worker"
        print(
            f"  {node.get('node_id', '?')[:12]}  {role}"
            f"  CPU {resources.get('CPU', 0):g}  GPU {resources.get('GPU', 0):g}"
        )
    return 0 if nodes else 1


def env(ns: argparse.Namespace) -> int:
    for name, value in client_env(read_info(ns.dir.resolve())).items():
        print(f"export {name}={value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="local_cluster.py",
        description="Start or stop a multi-node Ray cluster (head + workers) on this machine.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--dir",
            type=Path,
            default=default_dir(),
            help="the cluster's private directory (default: $NNCD_CLUSTER_DIR or "
            "/tmp/nncd-ray-<uid>)",
        )
        return sub

    start_parser = add("start", "start a head node and --workers worker nodes")
    start_parser.add_argument(
        "--workers", type=int, metavar="N", default=2, help="worker nodes (2)"
    )
    start_parser.add_argument(
        "--cpus", type=int, metavar="N", default=1, help="CPUs per worker node (1)"
    )
    start_parser.add_argument(
        "--head-cpus", type=int, metavar="N", help="CPUs of the head node (default: --cpus)"
    )
    start_parser.add_argument(
        "--gpus-per-worker",
        type=int,
        metavar="N",
        default=0,
        help="GPUs per worker node, split with CUDA_VISIBLE_DEVICES (0)",
    )
    start_parser.add_argument(
        "--object-store-mb",
        type=int,
        metavar="N",
        default=512,
        help="object store per node in MiB (512)",
    )
    start_parser.add_argument(
        "--port", type=int, metavar="N", default=0, help="GCS port (default: a free one)"
    )
    start_parser.add_argument(
        "--dashboard-port",
        type=int,
        metavar="N",
        default=0,
        help="job server port (default: a free one)",
    )
    start_parser.add_argument(
        "--no-auth", action="store_true", help="start without token authentication (not advised)"
    )
    start_parser.set_defaults(run=start)

    stop_parser = add("stop", "stop this cluster's processes (and no other Ray process)")
    stop_parser.add_argument(
        "--grace", type=float, metavar="N", default=STOP_GRACE_S, help="seconds before SIGKILL (10)"
    )
    stop_parser.add_argument(
        "--purge", action="store_true", help="also delete the directory (logs, token)"
    )
    stop_parser.set_defaults(run=stop)
    add("status", "list the alive nodes").set_defaults(run=status)
    add("env", "print export lines for clients of this cluster").set_defaults(run=env)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if getattr(ns, "workers", 0) < 0 or getattr(ns, "cpus", 1) < 0:
        sys.exit("error: --workers and --cpus must not be negative")
    code: int = ns.run(ns)
    return code


if __name__ == "__main__":
    sys.exit(main())

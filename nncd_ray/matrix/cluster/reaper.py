"""A watchdog that ends a private Ray cluster when its driver ends, however the driver ends.

Why: ``ray.init()`` starts the GCS, the raylet and the monitors with Linux's parent-death signal,
so they die with the driver; but the raylet's own children ``ray::DashboardAgent`` and
``ray::RuntimeEnvAgent`` do not. When the driver is SIGKILLed (an OOM killer, a lost pod) they
stay alive, parented to PID 1 (about 210 MB between them, measured with Ray 2.60), and they ignore
SIGTERM once their raylet is gone. A clean ``ray.shutdown()`` can also leave the temp dir behind,
when a dying process writes a log file after the driver removed the directory.

How: the driver starts this script as its own small process (stdlib only, in a session of its
own, so a Ctrl-C in the terminal does not reach it) and keeps the write end of a pipe to its stdin.
The kernel closes that pipe when the driver exits for any reason, SIGKILL included; on end of file
the watchdog ends every process of the cluster and then removes the cluster's temp dir.

Which processes: every Ray process of a cluster names its temp dir on its command line (GCS,
raylet, monitors) or holds files open inside it (agents and workers write their logs there), so
``/proc/<pid>/cmdline`` and ``/proc/<pid>/fd`` identify them without touching other clusters (their
temp dirs differ). The driver itself is never a target. Without ``/proc`` (not Linux) only the
directory is removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

# seconds a process gets to exit after SIGTERM before SIGKILL (the agents ignore SIGTERM once their
# raylet is gone, so the wait is short)
TERM_GRACE_S = 2.0
# seconds to keep sweeping: processes still starting when the driver died may appear a little later
SWEEP_S = 15.0
POLL_S = 0.2


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + "/")


def _state(pid: int) -> str:
    """The process's one-letter state from ``/proc/<pid>/stat`` ('' when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # the command name is in parentheses and may hold spaces; the state follows the last ')'
    return stat.rpartition(")")[2].split()[0] if ")" in stat else ""


def uses_directory(pid: int, directory: str) -> bool:
    """Whether process ``pid`` names ``directory`` on its command line or holds a file in it."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    encoded = directory.encode()
    if any(arg == encoded or encoded + b"/" in arg or arg.endswith(b"=" + encoded) for arg in args):
        return True
    try:
        if _inside(os.readlink(f"/proc/{pid}/cwd"), directory):
            return True
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if _inside(os.readlink(f"/proc/{pid}/fd/{fd}"), directory):
                return True
        except OSError:
            continue
    return False


def cluster_pids(directory: str, *, exclude: frozenset[int] = frozenset()) -> list[int]:
    """Live processes (zombies excluded: they are dead already) that belong to the cluster whose
    temp dir is ``directory``; ``exclude`` and this process are never listed."""
    if not Path("/proc").is_dir():
        return []
    skip = exclude | {os.getpid()}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        pid = int(entry)
        if uses_directory(pid, directory) and _state(pid) not in ("", "Z", "X"):
            found.append(pid)
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:  # gone already, or not ours
            continue


def end_cluster(directory: str, *, exclude: frozenset[int] = frozenset()) -> int:
    """SIGTERM the cluster's processes, SIGKILL what is left after :data:`TERM_GRACE_S`, keep
    sweeping for :data:`SWEEP_S` while any appear; return how many were found."""
    seen: set[int] = set()
    deadline = time.monotonic() + SWEEP_S
    while True:
        pids = cluster_pids(directory, exclude=exclude)
        if not pids:
            # nothing now; look once more shortly in case one was still being spawned
            time.sleep(POLL_S)
            if not cluster_pids(directory, exclude=exclude) or time.monotonic() > deadline:
                return len(seen)
            continue
        seen.update(pids)
        _signal_all(pids, signal.SIGTERM)
        grace = time.monotonic() + TERM_GRACE_S
        while time.monotonic() < grace and cluster_pids(directory, exclude=exclude):
            time.sleep(POLL_S)
        _signal_all(cluster_pids(directory, exclude=exclude), signal.SIGKILL)
        if time.monotonic() > deadline:
            return len(seen)


def remove_directory(directory: str, attempts: int = 5) -> None:
    """Remove the temp dir; retried, since a process that just died may have written one more
    file into it."""
    for _ in range(attempts):
        shutil.rmtree(directory, ignore_errors=True)
        if not os.path.exists(directory):
            return
        time.sleep(POLL_S)


def _wait_for_eof() -> None:
    """Block until the driver's end of the pipe on stdin closes (the driver exited or let go)."""
    stream = sys.stdin.buffer
    while stream.read(4096):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", required=True, help="the private cluster's Ray temp dir")
    parser.add_argument("--driver-pid", type=int, required=True, help="never signalled")
    args = parser.parse_args(argv)
    directory = os.path.realpath(args.dir)
    # the terminal's Ctrl-C goes to the driver's process group; this process must outlive it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("ready", flush=True)  # the driver starts Ray only once the watchdog is up
    _wait_for_eof()
    end_cluster(directory, exclude=frozenset({args.driver_pid}))
    remove_directory(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())

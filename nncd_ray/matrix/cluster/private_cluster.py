"""A private local Ray cluster that lives and dies with the process that started it.

``nncd matrix`` without ``--address`` (and without ``$RAY_ADDRESS``) starts a Ray cluster of its
own on this machine. :class:`PrivateCluster` starts it so that nothing of it outlives the driver:

- its temp dir (sessions, logs, sockets) is a fresh directory under ``$NNCD_RAY_TMPDIR`` (default
  ``/tmp``: Unix socket paths inside it must stay under 107 bytes);
- a watchdog process (:mod:`nncd_ray.matrix.cluster.reaper`) ends every process of the cluster and
removes
  the temp dir when the driver exits, cleanly or not (SIGKILL included);
- token authentication stays on, as Ray 2.60 turns it on for every new local cluster when
  ``RAY_AUTH_MODE`` is unset; Ray then logs "Token authentication is enabled for this Ray
  cluster. Set RAY_AUTH_MODE=disabled to opt out" on every run. That line tells a nncd user
  nothing they can act on (the cluster is private, and opting out would only weaken it), so
  exactly that record is dropped while this cluster starts. Setting ``RAY_AUTH_MODE=token`` in
  the environment instead does not work once Ray is imported: Ray reads the mode into its C++
  config at import, so the driver would then fail to authenticate to its own cluster. A mode the
  user set (``disabled`` included) is Ray's to honour, and Ray does not warn about it. Clusters
  joined by address are not touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

from nncd_ray.matrix.cluster import reaper

log = logging.getLogger(__name__)

# parent of the private clusters' temp dirs (short: Ray's socket paths live inside)
TMPDIR_ENV = "NNCD_RAY_TMPDIR"
# the logger and the start of the record that Ray 2.60 logs when it turns token auth on by default
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"
# seconds to wait for the watchdog to end the cluster's processes and remove its temp dir
WATCHDOG_EXIT_TIMEOUT_S = reaper.SWEEP_S + 3 * reaper.TERM_GRACE_S + 5.0


def temp_parent() -> str:
    """Where private clusters put their temp dirs: ``$NNCD_RAY_TMPDIR``, else ``/tmp``."""
    return os.environ.get(TMPDIR_ENV) or "/tmp"


class Watchdog:
    """The reaper process (:mod:`nncd_ray.matrix.cluster.reaper`) guarding one temp dir."""

    def __init__(self, temp_dir: str) -> None:
        self.temp_dir = temp_dir
        # -I -S: the script needs only the standard library, so it starts in a few milliseconds
        # and cannot be broken by the environment's site packages; a new session keeps the
        # terminal's Ctrl-C (sent to the driver's process group) away from it
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                str(Path(reaper.__file__).resolve()),
                "--dir",
                temp_dir,
                "--driver-pid",
                str(os.getpid()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
        )
        stdout: IO[bytes] | None = self.process.stdout
        ready = stdout.readline() if stdout is not None else b""
        if ready.strip() != b"ready":
            log.warning(
                "the watchdog of the private Ray cluster did not start (exit %s); Ray processes "
                "may outlive a killed driver",
                self.process.poll(),
            )

    def release(self) -> None:
        """Let the watchdog end the cluster's processes and remove the temp dir; wait for it."""
        if self.process.stdin is not None:
            self.process.stdin.close()  # end of file: the same signal a dying driver gives
        try:
            self.process.wait(timeout=WATCHDOG_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("the watchdog of %s did not finish; stopping it", self.temp_dir)
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # in case the watchdog could not


def _drop_auth_notice(record: logging.LogRecord) -> bool:
    """Logging filter: False (drop) for Ray's token-auth-on-by-default notice only."""
    return not record.getMessage().startswith(_AUTH_NOTICE)


class PrivateCluster:
    """``with PrivateCluster(num_cpus=4): ...``: ``ray.init`` of a new local cluster, shut down
    (processes ended, temp dir removed) on exit; its processes also end if this process dies.
    ``log_to_driver=False`` keeps the workers' output in the session's log files (under
    :attr:`temp_dir`) instead of this process's stderr."""

    def __init__(self, *, num_cpus: int, log_to_driver: bool = True) -> None:
        self.num_cpus = num_cpus
        self.log_to_driver = log_to_driver
        self.temp_dir: str | None = None
        self._watchdog: Watchdog | None = None

    def __enter__(self) -> PrivateCluster:
        import ray

        parent = temp_parent()
        os.makedirs(parent, exist_ok=True)
        self.temp_dir = tempfile.mkdtemp(prefix="nncd-ray-", dir=parent)
        self._watchdog = Watchdog(self.temp_dir)
        auth_logger = logging.getLogger(_AUTH_LOGGER)
        auth_logger.addFilter(_drop_auth_notice)
        try:
            ray.init(
                address="local",
                num_cpus=self.num_cpus,
                include_dashboard=False,
                _temp_dir=self.temp_dir,
                logging_level=logging.WARNING,
                log_to_driver=self.log_to_driver,
            )
        except BaseException:
            self._release()
            raise
        finally:
            auth_logger.removeFilter(_drop_auth_notice)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        import ray

        try:
            ray.shutdown()
        finally:
            self._release()

    def _release(self) -> None:
        if self._watchdog is not None:
            self._watchdog.release()
            self._watchdog = None


__all__ = ["TMPDIR_ENV", "PrivateCluster", "Watchdog", "temp_parent"]

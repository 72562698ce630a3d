"""A lease on a matrix store, so that two drivers never compute into the same store at once.

The lease is a small JSON file **beside** the store: ``<store>.lease.json`` (``m.zarr`` ->
``m.zarr.lease.json``), written through fsspec so it works for local paths and ``s3://`` alike. It
lives outside the Zarr group because zarr warns about foreign objects inside a group, and because
deleting a store (``--overwrite``) must not delete the lease of the driver doing it.

Rules:

- A driver holding the lease renews its ``heartbeat`` (Unix seconds) every few seconds from a
  background thread, and deletes the file on a clean exit.
- Another driver refuses with :class:`~nncd_ray.errors.StoreLocked` while the lease is fresh.
- A lease is stale, and is taken over, when its heartbeat is older than ``ttl_s`` (default 60 s), or
  when it was written on this host by a process that is no longer alive (a driver killed with
  ``kill -9`` is replaced at once on the same machine). Hosts' clocks are assumed to agree to well
  within ``ttl_s``.
- Object stores have no exclusive create, so after writing its lease a driver reads it back after a
  short pause and refuses if another driver's write won; the heartbeat thread keeps checking and
  :meth:`Lease.check` raises if the lease was lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from nncd_ray.errors import ConfigError, StoreLocked
from nncd_ray.matrix.store.storage_errors import store_errors

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 60.0


@dataclass(frozen=True, kw_only=True)
class LeaseInfo:
    """What a lease file holds. Times are Unix seconds."""

    owner: str
    host: str
    pid: int
    acquired_at: float
    heartbeat: float

    def describe(self, now: float | None = None) -> str:
        age = (time.time() if now is None else now) - self.heartbeat
        since = datetime.fromtimestamp(self.acquired_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"host {self.host}, pid {self.pid}, since {since}, last heartbeat {age:.0f} s ago"


def lease_url(store_url: str) -> str:
    """Where the lease of the store at ``store_url`` lives: ``<store>.lease.json``."""
    stripped = store_url.rstrip("/")
    if "://" in stripped and "/" not in stripped.split("://", 1)[1]:
        raise ConfigError(
            f"store {store_url!r} is a bucket root; give a path inside it, like {stripped}/m.zarr"
        )
    return stripped + ".lease.json"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class Lease:
    """The lease of one store, held by this process while it computes. Use as a context manager."""

    def __init__(
        self,
        store_url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        renew_every_s: float | None = None,
        settle_s: float = 0.2,
    ) -> None:
        self.url = lease_url(store_url)
        self.store_url = store_url
        with store_errors(store_url):  # e.g. s3fs not installed: one line, not a traceback
            self.fs, self.path = fsspec.core.url_to_fs(self.url, **dict(storage_options or {}))
        self.ttl_s = float(ttl_s)
        # renew well inside the TTL, so a few missed beats do not lose the lease
        self.renew_every_s = renew_every_s if renew_every_s is not None else min(5.0, ttl_s / 4)
        self.settle_s = settle_s
        self.owner = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.acquired_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    # -- reading -----------------------------------------------------------------------------

    def read(self) -> LeaseInfo | None:
        """The lease currently in the file, or ``None`` when there is none."""
        for _ in range(5):
            try:
                raw = self.fs.cat_file(self.path)
            except FileNotFoundError:
                return None
            try:
                return LeaseInfo(**json.loads(raw))
            except (ValueError, TypeError):
                time.sleep(0.05)  # caught mid-write (local exclusive create): read again
        log.warning("lease file %s is unreadable; treating it as stale", self.url)
        return LeaseInfo(owner="?", host="?", pid=-1, acquired_at=0.0, heartbeat=0.0)

    def is_stale(self, info: LeaseInfo, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now - info.heartbeat > self.ttl_s:
            return True
        return info.host == self.host and not pid_alive(info.pid)

    # -- writing -----------------------------------------------------------------------------

    def _record(self) -> bytes:
        info = LeaseInfo(
            owner=self.owner,
            host=self.host,
            pid=self.pid,
            acquired_at=self.acquired_at,
            heartbeat=time.time(),
        )
        return json.dumps(asdict(info)).encode()

    def _write(self, *, exclusive: bool = False) -> bool:
        """Write our record; with ``exclusive`` on a local disk, only if no lease file exists."""
        data = self._record()
        if isinstance(self.fs, LocalFileSystem):
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            if exclusive:
                try:
                    handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                return True
            temporary = f"{self.path}.{self.owner}.tmp"
            with open(temporary, "wb") as out:
                out.write(data)
            os.replace(temporary, self.path)  # atomic: readers see the old or the new lease
            return True
        self.fs.pipe_file(self.path, data)  # one PUT: atomic on object stores
        return True

    def acquire(self) -> Lease:
        """Take the lease or raise :class:`StoreLocked` naming who holds it."""
        current = self.read()
        if current is not None and current.owner != self.owner and not self.is_stale(current):
            raise self._locked(current)
        self.acquired_at = time.time()
        if current is None and not self._write(exclusive=True):
            holder = self.read()
            if holder is not None:
                raise self._locked(holder)
        if current is not None:
            if current.owner != self.owner:
                log.warning("taking over the stale lease of %s (%s)", self.url, current.describe())
            self._write()
        time.sleep(self.settle_s)
        holder = self.read()
        if holder is None or holder.owner != self.owner:
            raise StoreLocked(
                f"store {self.store_url} was claimed by another driver at the same moment"
                + (f" ({holder.describe()})" if holder else "")
                + "; try again once it has finished"
            )
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="nncd-lease", daemon=True)
        self._thread.start()
        return self

    def _locked(self, holder: LeaseInfo) -> StoreLocked:
        return StoreLocked(
            f"store {self.store_url} is being computed by another driver ({holder.describe()}); "
            f"wait for it to finish, or if that driver is gone, retry once its lease is "
            f"{self.ttl_s:.0f} s without a heartbeat (lease file {self.url})"
        )

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                holder = self.read()
                if holder is None or holder.owner != self.owner:
                    self._lost = f"lost the lease of store {self.store_url}: " + (
                        f"taken over by {holder.describe()}" if holder else "lease file deleted"
                    )
                    return
                self._write()
            except OSError as exc:  # transient storage error: try again next beat
                log.warning("could not renew the lease %s: %s", self.url, exc)

    def check(self) -> None:
        """Raise :class:`StoreLocked` if another driver took the lease over."""
        if self._lost is not None:
            raise StoreLocked(self._lost)

    def release(self) -> None:
        """Stop renewing and delete the lease file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with contextlib.suppress(OSError):
            holder = self.read()
            if holder is not None and holder.owner == self.owner:
                self.fs.rm_file(self.path)

    def __enter__(self) -> Lease:
        # the first request a job makes to its store: credentials, bucket, endpoint, permissions
        with store_errors(self.store_url):
            return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

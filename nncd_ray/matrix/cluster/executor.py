"""The Ray executor: a pool of scorer actors driven by the engine's own scheduling loop.

Why not ``ray.util.ActorPool``: it does not retry a task whose actor died. Here each tile has an
attempt counter; a tile whose actor died goes back to the front of the queue, the dead actor is
replaced by a new one (never reused: actors run with ``max_restarts=0``), and a tile that fails
``max_attempts`` times is given up on and recorded while the job goes on.

Each actor holds up to ``TILES_IN_FLIGHT`` tiles and runs them in two threads: while one tile's
passes run on the device, the next one is tokenized and planned and the previous one is written to
the store (:class:`~nncd_ray.matrix.worker.TileWorker` keeps the device to one tile at a time), so
the device does not wait for the host between tiles. A driver killed mid-job loses at most that many
tiles per actor.

Actors that cannot be placed stay pending forever in Ray; so the cluster's resources are checked
before any actor is created, and the wait for actors to start has a timeout that says why.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayError, RayTaskError

from nncd_ray.errors import ClusterError, NNCDError
from nncd_ray.matrix.cluster.gpu_assignment import (
    actor_runtime_env,
    lm_device,
    resolve_gpus_per_actor,
)
from nncd_ray.matrix.cluster.private_cluster import PrivateCluster
from nncd_ray.matrix.failures import Failure, RetryPolicy, TileAttemptFailed, classify, one_line
from nncd_ray.matrix.store.matrix_store import is_remote
from nncd_ray.matrix.worker import TileResult, TileWorker

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nncd_ray.data.corpus import Corpus
    from nncd_ray.matrix.config import MatrixConfig
    from nncd_ray.matrix.store.lease import Lease
    from nncd_ray.matrix.tile_ledger import TileLedger
    from nncd_ray.matrix.tiling import Tile
    from nncd_ray.scorers import ScorerSpec

log = logging.getLogger(__name__)

# how long to wait for a TCP answer from a Ray address before calling it unreachable
CONNECT_TIMEOUT_S = 10.0
# how long one ray.wait blocks before the loop checks the lease and the start-up deadline again
POLL_S = 1.0
# tiles given to one actor at a time (it runs them in as many threads, one on the device)
TILES_IN_FLIGHT = 2


@ray.remote(max_restarts=0, max_task_retries=0)
class ScorerActor:
    """One scorer (model loaded once) plus the job's documents; computes and stores tiles."""

    def __init__(
        self,
        spec: ScorerSpec,
        store_url: str,
        storage_options: dict[str, Any] | None,
        row_texts: Sequence[str],
        col_texts: Sequence[str] | None,
    ) -> None:
        self._worker: TileWorker | None = None
        self._error: Exception | None = None
        try:
            self._worker = TileWorker(
                spec=spec,
                store_url=store_url,
                storage_options=storage_options,
                row_texts=row_texts,
                col_texts=col_texts,
                node_id=ray.get_runtime_context().get_node_id(),
            )
        except Exception as exc:  # reported by ready(), so the driver sees the real error
            self._error = exc

    def ready(self) -> dict[str, Any]:
        """Where this actor runs and its scorer's fingerprint; raises the scorer's build error."""
        if self._error is not None:
            raise self._error
        assert self._worker is not None
        return {
            "node_id": self._worker.node_id,
            "pid": os.getpid(),
            "fingerprint": self._worker.fingerprint(),
            # what Ray assigned and what the scorer can see (None: variable unset, all visible)
            "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    def compute(self, tile: Tile) -> TileResult:
        """Compute and store ``tile``; a failure is raised as a classified TileAttemptFailed."""
        if self._worker is None:
            raise RuntimeError(f"scorer actor failed to start: {self._error}")
        try:
            return self._worker.compute(tile)
        except Exception as exc:  # classified here, where its cause chain is still intact
            raise TileAttemptFailed.wrap(exc) from exc


@dataclass(kw_only=True)
class _Slot:
    """One place in the pool; its actor is replaced when it dies."""

    actor: Any
    ready_ref: Any | None  # ObjectRef of actor.ready() while the actor is starting
    # the tiles in flight and the ObjectRefs of their results
    tasks: dict[Any, Tile] = field(default_factory=dict)
    where: str = "starting"  # "pid P on node N" once ready


def reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether something listens at a ``host:port`` (or ``ray://host:port``) Ray address.

    Ray itself retries an unreachable address for minutes; this answers within ``timeout``.
    Addresses without a port (``auto``) are left to Ray.
    """
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return True
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError:
        return False
    return True


def _amount(value: float) -> str:
    return f"{value:g}"


class RayExecutor:
    """Runs the tiles of one job on Ray actors. Use as a context manager (cleans up Ray)."""

    def __init__(self, config: MatrixConfig, rows: Corpus, cols: Corpus | None) -> None:
        self.config = config
        self.rows = rows
        self.cols = cols
        self.slots: list[_Slot] = []
        self.fingerprint: dict[str, Any] | None = None
        self.actors_started = 0
        self.actor_deaths = 0
        self.start_failures = 0
        # GPUs per actor, resolved from config.gpus_per_actor ("auto") once the cluster is known
        self.gpus_per_actor = 0.0
        # what each started actor reported (pid, node, GPU ids, CUDA_VISIBLE_DEVICES), in order
        self.actor_info: list[dict[str, Any]] = []
        # a cluster joined by address (disconnected on exit), or a private one (ended on exit)
        self._owns_ray = False
        self._private: PrivateCluster | None = None
        self._refs: tuple[Any, Any] | None = None

    # -- cluster -------------------------------------------------------------------------------

    def __enter__(self) -> RayExecutor:
        if ray.is_initialized():
            return self
        address = self.config.address or os.environ.get("RAY_ADDRESS")
        if address:
            if not reachable(address):
                raise ClusterError(
                    f"cannot reach the Ray cluster at {address} (nothing answers there within "
                    f"{CONNECT_TIMEOUT_S:.0f} s); check --address (or $RAY_ADDRESS) and that the "
                    "cluster is up (`ray status`)"
                )
            try:
                ray.init(address=address, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(
                    f"cannot join the Ray cluster at {address}: {one_line(exc)}; check --address "
                    "(or $RAY_ADDRESS) and that the cluster is up (`ray status`)"
                ) from None
            self._owns_ray = True
        else:
            # a private local cluster that dies with this process (see
            # nncd_ray.matrix.cluster.private_cluster)
            cpus = max(
                os.cpu_count() or 1, math.ceil(self.config.actors * self.config.cpus_per_actor)
            )
            self._private = PrivateCluster(num_cpus=cpus).__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for slot in self.slots:
            self._kill(slot.actor)
        self.slots.clear()
        if self._private is not None:
            self._private.__exit__(exc_type, exc, traceback)
            self._private = None
        elif self._owns_ray:
            ray.shutdown()

    def resolve_gpus(self) -> float:
        """Set and return :attr:`gpus_per_actor` from the config and the cluster's GPUs."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cluster_gpus = sum(float(n.get("Resources", {}).get("GPU", 0.0)) for n in nodes)
        self.gpus_per_actor = resolve_gpus_per_actor(
            self.config.gpus_per_actor, self.config.scorer, cluster_gpus
        )
        return self.gpus_per_actor

    def actor_options(self) -> dict[str, Any]:
        """Ray options of every scorer actor: resources, spreading, and (without a GPU) an
        environment in which no GPU is visible."""
        options: dict[str, Any] = {
            "num_cpus": self.config.cpus_per_actor,
            "num_gpus": self.gpus_per_actor,
            "scheduling_strategy": "SPREAD",
            # one thread per tile in flight (the worker keeps the device to one of them)
            "max_concurrency": TILES_IN_FLIGHT,
        }
        runtime_env = actor_runtime_env(self.gpus_per_actor)
        if runtime_env is not None:
            options["runtime_env"] = runtime_env
        return options

    def check_resources(self) -> None:
        """Raise ClusterError when no node could ever host one actor."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        for resource, asked in (
            ("GPU", self.gpus_per_actor),
            ("CPU", self.config.cpus_per_actor),
        ):
            if asked <= 0:
                continue
            per_node = [float(n.get("Resources", {}).get(resource, 0.0)) for n in nodes]
            total, largest = sum(per_node), max(per_node, default=0.0)
            if largest < asked:
                where = (
                    f"the cluster has {_amount(total)} {resource}s"
                    if total < asked
                    else f"its largest node has {_amount(largest)} {resource}s"
                )
                message = f"asked for {_amount(asked)} {resource} per actor; {where}"
                if self.config.wait_for_resources:
                    log.warning(
                        "%s; waiting up to %.0f s for the autoscaler to add nodes",
                        message,
                        self.config.actor_timeout_s,
                    )
                    return
                hint = ""
                if resource == "GPU":
                    hint = (
                        " (--device cuda needs them; pass --device cpu to score on CPUs)"
                        if lm_device(self.config.scorer) == "cuda"
                        else " (pass --gpus-per-actor 0 to score on CPUs)"
                    )
                raise ClusterError(
                    f"{message}{hint}; on an autoscaling cluster pass --wait-for-resources"
                )
            fit = int(sum(math.floor(n / asked) for n in per_node))
            if fit < self.config.actors:
                log.warning(
                    "%d actors asked for, but only %d fit on the cluster's %s %ss at once",
                    self.config.actors,
                    fit,
                    _amount(total),
                    resource,
                )

    # -- actors --------------------------------------------------------------------------------

    def _spawn(self) -> _Slot:
        assert self._refs is not None
        actor = ScorerActor.options(**self.actor_options()).remote(  # type: ignore[attr-defined]
            self.config.scorer,
            self.config.store,
            dict(self.config.storage_options or {}),
            self._refs[0],
            self._refs[1],
        )
        self.actors_started += 1
        return _Slot(actor=actor, ready_ref=actor.ready.remote())

    @staticmethod
    def _kill(actor: Any) -> None:
        try:
            ray.kill(actor, no_restart=True)
        except Exception as exc:  # already gone: nothing to free
            log.debug("killing an actor: %s", exc)

    def _replace(self, slot: _Slot) -> None:
        self._kill(slot.actor)
        fresh = self._spawn()
        slot.actor, slot.ready_ref, slot.tasks = fresh.actor, fresh.ready_ref, {}
        slot.where = "starting"

    def _on_ready(self, slot: _Slot) -> None:
        """Handle a finished ``ready()`` call: the actor is usable, failed to build, or died."""
        ref: Any = slot.ready_ref
        try:
            info: dict[str, Any] = ray.get(ref)
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, NNCDError):
                raise cause from None  # e.g. ModelNotFound: the same on every actor
            raise ClusterError(
                f"a scorer actor failed to start: {one_line(cause or exc)}"
            ) from None
        except RayError as exc:
            self.start_failures += 1
            if self.start_failures >= max(3, self.config.actors * self.config.max_attempts):
                raise ClusterError(
                    f"scorer actors keep dying while starting ({self.start_failures} so far; last: "
                    f"{one_line(exc)}); check memory and the Ray logs"
                ) from None
            log.warning("a scorer actor died while starting (%s); starting another", one_line(exc))
            self._replace(slot)
            return
        slot.ready_ref = None
        gpus = f", GPU {','.join(info['gpu_ids'])}" if info.get("gpu_ids") else ""
        slot.where = f"pid {info['pid']} on node {info['node_id'][:12]}{gpus}"
        self.actor_info.append(info)
        if self.fingerprint is None:
            self.fingerprint = info["fingerprint"]
        elif info["fingerprint"] != self.fingerprint:
            raise ClusterError(
                f"scorer actors disagree on what they compute: {self.fingerprint} vs "
                f"{info['fingerprint']} ({slot.where}); make the same model files and package "
                "versions available on every node"
            )

    def _no_start_message(self, waited: float) -> str:
        return (
            f"no scorer actor started within {waited:.0f} s (each asks for "
            f"{_amount(self.config.cpus_per_actor)} CPU and {_amount(self.gpus_per_actor)} "
            f"GPU; the cluster has {ray.available_resources()} free now); free resources, ask for "
            "fewer, or raise the timeout"
        )

    def start(self) -> dict[str, Any]:
        """Resolve the GPUs per actor, check resources, start the actors, wait for the first;
        return the scorer fingerprint."""
        self.resolve_gpus()
        self.check_resources()
        if len([n for n in ray.nodes() if n.get("Alive")]) > 1 and not is_remote(self.config.store):
            log.warning(
                "store %s is a local path on a multi-node cluster: every node must see it at that "
                "path (a shared filesystem); use an object store URL (s3://…) otherwise",
                self.config.store,
            )
        row_ref = ray.put(tuple(self.rows.texts))
        col_ref = None if self.cols is None else ray.put(tuple(self.cols.texts))
        self._refs = (row_ref, col_ref)
        self.slots = [self._spawn() for _ in range(self.config.actors)]
        started = time.monotonic()
        while self.fingerprint is None:
            waited = time.monotonic() - started
            if waited > self.config.actor_timeout_s:
                raise ClusterError(self._no_start_message(waited))
            self._wait(timeout=min(POLL_S * 5, self.config.actor_timeout_s - waited + 0.01))
        return self.fingerprint

    def wait_for_actors(self, timeout_s: float) -> int:
        """Wait until every actor of the pool has started, or ``timeout_s`` seconds passed (no
        tile in flight); return how many have started."""
        deadline = time.monotonic() + timeout_s
        while any(s.ready_ref is not None for s in self.slots) and time.monotonic() < deadline:
            self._wait(timeout=min(POLL_S, max(deadline - time.monotonic(), 0.01)))
        return sum(s.ready_ref is None for s in self.slots)

    # -- scheduling ------------------------------------------------------------------------------

    def _wait(self, timeout: float) -> list[tuple[_Slot, Any]]:
        """Wait for any ready() or tile ref; handle ready() refs here, return finished tiles."""
        by_ref = {}
        for slot in self.slots:
            for ref in slot.tasks if slot.tasks else [slot.ready_ref]:
                if ref is not None:
                    by_ref[ref] = slot
        if not by_ref:
            return []
        refs = list(by_ref)
        done, rest = ray.wait(refs, num_returns=1, timeout=timeout)
        if done and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        finished = []
        for ref in done:
            slot = by_ref[ref]
            if ref is slot.ready_ref:
                self._on_ready(slot)
            else:
                finished.append((slot, ref))
        return finished

    def run(
        self, todo: Sequence[Tile], ledger: TileLedger, lease: Lease, policy: RetryPolicy
    ) -> None:
        """Compute ``todo`` (largest first) with the pool; failures end up in ``ledger``, retries
        and the early stop follow ``policy`` (tiles in flight when it stops are abandoned: their
        actors are killed on exit, and a tile without its marker is computed by a later run)."""
        ledger.worker_ready()
        pending: deque[Tile] = deque(todo)
        no_worker_since: float | None = None
        try:
            while pending or any(s.tasks for s in self.slots):
                lease.check()
                if policy.stopped is not None:
                    in_flight = sum(len(s.tasks) for s in self.slots)
                    policy.not_attempted = len(pending) + in_flight
                    return
                for slot in self.slots:
                    while pending and slot.ready_ref is None and len(slot.tasks) < TILES_IN_FLIGHT:
                        tile = pending.popleft()
                        slot.tasks[slot.actor.compute.remote(tile)] = tile
                if any(s.ready_ref is None for s in self.slots):
                    no_worker_since = None
                elif no_worker_since is None:
                    no_worker_since = time.monotonic()
                elif time.monotonic() - no_worker_since > self.config.actor_timeout_s:
                    raise ClusterError(self._no_start_message(time.monotonic() - no_worker_since))
                for slot, ref in self._wait(timeout=POLL_S):
                    if policy.stopped is not None:
                        break  # results after the stopping one are abandoned, like the queue
                    self._on_tile(slot, ref, pending, policy, ledger)
        finally:
            ledger.actors_started = self.actors_started
            ledger.actor_deaths = self.actor_deaths

    def _on_tile(
        self,
        slot: _Slot,
        ref: Any,
        pending: deque[Tile],
        policy: RetryPolicy,
        ledger: TileLedger,
    ) -> None:
        tile = slot.tasks.pop(ref, None)
        if tile is None:  # its actor was replaced after another of its tiles found it dead
            return
        try:
            result: TileResult = ray.get(ref)
        except RayTaskError as exc:  # the scorer raised; the actor is fine and stays
            failure = classify(exc.cause if exc.cause is not None else exc)
        except RayError as exc:  # the actor died (or is unreachable): never reuse it
            failure = Failure(
                kind=type(exc).__name__,
                message=f"actor ({slot.where}) died: {one_line(exc)}",
                deterministic=False,
            )
            self.actor_deaths += 1
            # the actor's other tiles died with it: back to the queue, not charged an attempt
            pending.extendleft(slot.tasks.values())
            self._replace(slot)
        else:
            policy.on_success(tile)
            ledger.tile_done(tile, result)
            return
        if policy.on_failure(tile, failure, ledger):
            pending.appendleft(tile)  # retried next, by whichever actor is free first

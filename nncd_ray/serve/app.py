"""Putting a service on a Ray cluster: the application of the two deployments, its deployment with
a start-up timeout and one-line failures, and the cluster it runs on.

Without an address (and without ``$RAY_ADDRESS``) the service gets a private local Ray cluster
(:class:`~nncd_ray.matrix.cluster.private_cluster.PrivateCluster`: token authentication on, and
nothing of it outlives the ``nncd serve`` process). With one, it joins that cluster, and on stop
deletes its application only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from nncd_ray import errors
from nncd_ray.errors import ClusterError, NNCDError
from nncd_ray.matrix.cluster.gpu_assignment import actor_runtime_env, resolve_gpus_per_actor
from nncd_ray.serve.config import AUTO_BATCH_MAX, ONGOING_PER_BATCH_SLOT, ServeConfig

if TYPE_CHECKING:
    from ray.serve import Application, Deployment

    from nncd_ray.data.corpus import Corpus

# seconds between looks at the application's status while it starts
POLL_S = 0.5
# requests the front end holds at once (it only waits on the scorers)
FRONTEND_ONGOING = 1024
# requests a scorer replica accepts at once, at least (also with small batches)
MIN_ONGOING = 64
# the last line of a replica's traceback: "SomeError: message"
_ERROR_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): (.+)$")


def replica_options(config: ServeConfig, gpus_per_replica: float) -> dict[str, Any]:
    """Ray actor options of a scorer replica: its CPUs and GPUs, and an environment that hides
    GPUs from a replica that got none (Ray 2.60 no longer does; see ``gpu_assignment``)."""
    options: dict[str, Any] = {"num_cpus": config.cpus_per_replica, "num_gpus": gpus_per_replica}
    runtime_env = actor_runtime_env(gpus_per_replica)
    if runtime_env is not None:
        options["runtime_env"] = runtime_env
    return options


def build_application(
    config: ServeConfig, references: Corpus, *, gpus_per_replica: float
) -> Application:
    """The service as a Serve application: ``config.replicas`` scorer replicas behind one front
    end. Importable without a running cluster (nothing starts until it is deployed)."""
    from nncd_ray.serve.frontend import Frontend as frontend_class
    from nncd_ray.serve.replica import NCDScorer as scorer_class

    # @serve.deployment makes the classes Deployments; type checkers still see the classes
    scorer_deployment = cast("Deployment", scorer_class)
    frontend_deployment = cast("Deployment", frontend_class)

    config.validate()
    batch_slots = config.max_batch or AUTO_BATCH_MAX
    scorer = scorer_deployment.options(
        num_replicas=config.replicas,
        ray_actor_options=replica_options(config, gpus_per_replica),
        # requests wait in the replica's batch queue rather than in the router's retry loop
        max_ongoing_requests=max(MIN_ONGOING, ONGOING_PER_BATCH_SLOT * batch_slots),
    ).bind(config, references)
    frontend = frontend_deployment.options(max_ongoing_requests=FRONTEND_ONGOING)
    return frontend.bind(scorer, config, len(references))


def gpus_for(config: ServeConfig) -> float:
    """GPUs per scorer replica on the connected cluster (``auto`` resolved as for the matrix
    job's actors); refuses a cluster where no replica could ever be placed."""
    import ray

    resources = ray.cluster_resources()
    gpus = resolve_gpus_per_actor(config.gpus_per_replica, config.scorer, resources.get("GPU", 0))
    for name, wanted in (("GPU", gpus), ("CPU", config.cpus_per_replica)):
        have = float(resources.get(name, 0.0))
        if wanted > have:
            raise ClusterError(
                f"a scorer replica asks for {wanted:g} {name}, and the cluster has {have:g} in "
                f"all; lower --{'gpus' if name == 'GPU' else 'cpus'}-per-replica or add nodes"
            )
    return gpus


def failure_error(message: str) -> NNCDError:
    """The project's error that a failed replica's traceback ends with (same class, same line),
    else a :class:`ClusterError` carrying that last line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        match = _ERROR_LINE.match(line)
        if match is None:
            continue
        name, text = match.group(1).rsplit(".", 1)[-1], match.group(2)
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, NNCDError):
            return cls(text)
        return ClusterError(f"the service's replicas failed to start: {name}: {text}")
    summary = lines[0] if lines else "no reason given"
    return ClusterError(f"the service's replicas failed to start: {summary}")


def _deployment_messages(app_name: str) -> str:
    from ray import serve

    application = serve.status().applications.get(app_name)
    if application is None:
        return ""
    parts = [d.message for d in application.deployments.values() if d.message]
    return "\n".join(parts) or application.message


def deploy(config: ServeConfig, references: Corpus, *, timeout_s: float = 600.0) -> dict[str, Any]:
    """Deploy the service on the connected cluster and wait until it runs; returns what it runs
    with (``gpus_per_replica``). A replica that fails to start raises its own error (one line);
    one still not running after ``timeout_s`` (no node with its resources) raises ClusterError
    and the application is deleted."""
    from ray import serve
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import ApplicationStatus, LoggingConfig

    # Serve's driver-side INFO lines ("Started Serve…") say nothing a user acts on
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    gpus = gpus_for(config)
    application = build_application(config, references, gpus_per_replica=gpus)
    quiet = LoggingConfig(log_level="WARNING", enable_access_log=False)
    serve.start(http_options=HTTPOptions(host=config.host, port=config.port), logging_config=quiet)
    target = serve.RunTarget(
        target=application,
        name=config.app_name,
        route_prefix=config.route_prefix,
        logging_config=quiet,
    )
    serve.run_many([target], wait_for_applications_running=False)
    deadline = time.monotonic() + timeout_s
    while True:
        application_status = serve.status().applications.get(config.app_name)
        status = application_status.status if application_status is not None else None
        if status == ApplicationStatus.RUNNING:
            return {"gpus_per_replica": gpus}
        if status == ApplicationStatus.DEPLOY_FAILED:
            error = failure_error(_deployment_messages(config.app_name))
            serve.delete(config.app_name)
            raise error
        if time.monotonic() > deadline:
            serve.delete(config.app_name)
            raise ClusterError(
                f"the service did not start in {timeout_s:g} s: {config.replicas} scorer "
                f"replica(s) of {config.cpus_per_replica:g} CPU and {gpus:g} GPU each may be "
                "waiting for a node with those resources"
            )
        time.sleep(POLL_S)


def stop_service(config: ServeConfig) -> None:
    """Delete the service's application (its replicas end; Serve itself stays for others)."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.delete(config.app_name)


def local_url(config: ServeConfig) -> str:
    """The service's URL as seen from this machine (a wildcard host becomes the loopback)."""
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.port}{config.route_prefix.rstrip('/')}"


def wait_until_serving(url: str, *, timeout_s: float = 60.0) -> dict[str, Any]:
    """Poll ``GET /health`` until it answers 200 (the proxy is up and a scorer replica answers);
    returns its body. Raises ClusterError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    reason = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
                body: dict[str, Any] = json.loads(response.read())
                return body
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            reason = str(exc)
        time.sleep(POLL_S)
    raise ClusterError(f"the service at {url} did not answer /health in {timeout_s:g} s ({reason})")


@contextmanager
def ray_cluster(address: str | None, *, num_cpus: float) -> Iterator[str | None]:
    """Connect to ``address`` (or ``$RAY_ADDRESS``), else start a private local cluster of
    ``num_cpus`` CPUs (it ends with the block). Yields the folder of the private cluster's logs
    (None for a joined cluster, whose logs stay on its nodes). The replicas' and Serve's output
    goes to those logs, not to this process's stderr: a service's console shows its own lines
    (a replica that fails to start is one line, not the controller's traceback)."""
    import ray

    from nncd_ray.matrix.cluster.private_cluster import PrivateCluster

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        cluster = PrivateCluster(num_cpus=max(1, math.ceil(num_cpus)), log_to_driver=False)
        with cluster:
            yield os.path.join(cluster.temp_dir or "", "session_latest", "logs")
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot join the Ray cluster at {address}: {exc}") from exc
    try:
        yield None
    finally:
        ray.shutdown()


__all__ = [
    "build_application",
    "deploy",
    "failure_error",
    "gpus_for",
    "local_url",
    "ray_cluster",
    "replica_options",
    "stop_service",
    "wait_until_serving",
]

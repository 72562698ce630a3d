"""The HTTP ingress of the service (this module imports Ray Serve and Starlette).

:class:`Frontend` takes every HTTP request Serve's proxy routes to the application. It checks the
bearer token (401), the body's size (413) and the request (400 with a one-line reason, from
:func:`~nncd_ray.serve.queries.parse_query` or from the scorer replica), sends the checked
request to a scorer replica, and sends it again when that replica dies under it (Serve replaces
dead replicas; ``--attempts`` tries in all), so a replica's death costs its callers time, not
answers. It keeps the metrics of ``GET /metrics``.

Routing is by hand rather than through FastAPI: five fixed routes need no framework, and every
error, a wrong path or method included, is the same one-line JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from nncd_ray.errors import InputError, NNCDError
from nncd_ray.serve.answers import ScorerReply
from nncd_ray.serve.auth import authorized
from nncd_ray.serve.config import ServeConfig
from nncd_ray.serve.metrics import ServiceMetrics
from nncd_ray.serve.queries import QueryRequest, parse_query

# failures of the replica, not of the request: the request goes to another replica
REPLICA_LOST = (RayActorError, ReplicaUnavailableError, WorkerCrashedError)
# Serve has no replica to take the request now
UNAVAILABLE = (BackPressureError, DeploymentUnavailableError)
# seconds GET /health waits for a scorer replica
HEALTH_TIMEOUT_S = 5.0
# seconds before the second, third … try of a request whose replica died (then doubling, to 2 s)
RETRY_PAUSE_S = 0.25


def one_line(exc: BaseException) -> str:
    """An exception as one line; a Ray task error as the line of the error it carries."""
    cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
    lines = str(cause).strip().splitlines()
    first = lines[0] if lines else ""
    return first if isinstance(cause, NNCDError) else f"{type(cause).__name__}: {first}"


def _replica_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the scorer replica died (rather than that the request failed)."""
    cause = exc.cause if isinstance(exc, RayTaskError) else None
    return isinstance(exc, REPLICA_LOST) or isinstance(cause, REPLICA_LOST)


def error_response(status: int, message: str) -> JSONResponse:
    """``{"error": message}`` with ``status`` (and the challenge header of a 401)."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@serve.deployment(name="Frontend", ray_actor_options={"num_cpus": 0})
class Frontend:
    """The HTTP ingress (see the module doc); ``n_refs`` bounds ``k`` and ``top``."""

    def __init__(self, scorer: DeploymentHandle, config: ServeConfig, n_refs: int) -> None:
        self.scorer = scorer
        self.config = config
        self.n_refs = n_refs
        self.metrics = ServiceMetrics(n_refs=n_refs)
        Route = Callable[[Request], Awaitable[JSONResponse]]
        self.routes: dict[tuple[str, str], Route] = {
            ("GET", "/health"): self.health,
            ("GET", "/metrics"): self.metrics_body,
            ("GET", "/references"): self.references,
            ("POST", "/classify"): self.classify,
            ("POST", "/distances"): self.distances,
        }

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.scope.get("path", "/")
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        path = "/" + path.strip("/")
        route = self.routes.get((request.method, path))
        if route is not None:
            return await route(request)
        methods = sorted(method for method, known in self.routes if known == path)
        if methods:
            return error_response(405, f"{path} takes {' or '.join(methods)}, not {request.method}")
        paths = ", ".join(f"{method} {known}" for method, known in self.routes)
        return error_response(404, f"no such endpoint {path}; this service has {paths}")

    def _refused(self, request: Request) -> JSONResponse | None:
        if authorized(request.headers.get("authorization"), self.config.token_sha256):
            return None
        if request.headers.get("authorization"):
            return error_response(401, "the bearer token was refused")
        return error_response(
            401, "this service needs a token: send 'Authorization: Bearer <token>'"
        )

    async def health(self, request: Request) -> JSONResponse:
        """200 with the answering scorer replica's description, or 503 when none answers. No
        token needed: it says only whether the service answers (for probes)."""
        try:
            info = await asyncio.wait_for(self.scorer.info.remote(), HEALTH_TIMEOUT_S)
        except Exception as exc:  # any failure to reach a scorer is "not healthy"
            reason = "timed out" if isinstance(exc, TimeoutError) else one_line(exc)
            return error_response(503, f"no scorer replica answered: {reason}")
        return JSONResponse({"status": "ok", **info, "scorer_replicas": await self._replicas()})

    async def _replicas(self) -> dict[str, int]:
        """Scorer replicas by state (``RUNNING``, ``STARTING``…), from the Serve controller."""
        try:
            status = await asyncio.wait_for(asyncio.to_thread(serve.status), HEALTH_TIMEOUT_S)
            application = status.applications[self.config.app_name]
            deployment = application.deployments["NCDScorer"]
        except Exception:  # the controller's view is a courtesy; health is the replica's answer
            return {}
        return {
            str(getattr(state, "value", state)): n for state, n in deployment.replica_states.items()
        }

    async def metrics_body(self, request: Request) -> JSONResponse:
        return self._refused(request) or JSONResponse(self.metrics.snapshot())

    async def references(self, request: Request) -> JSONResponse:
        refused = self._refused(request)
        if refused is not None:
            return refused
        return JSONResponse(await self.scorer.references.remote())

    async def classify(self, request: Request) -> JSONResponse:
        """``{"text": ...}`` (or a list) -> label, k nearest references, bits per byte."""
        return await self._query(request, "classify")

    async def distances(self, request: Request) -> JSONResponse:
        """``{"text": ...}`` (or a list) -> NCD to every reference, or the ``top`` nearest."""
        return await self._query(request, "distances")

    async def _query(self, request: Request, endpoint: str) -> JSONResponse:
        started = time.perf_counter()
        response, queries, batch_sizes = await self._answer(request, endpoint)
        self.metrics.record(
            endpoint,
            response.status_code,
            time.perf_counter() - started,
            queries=queries,
            batch_sizes=batch_sizes,
        )
        return response

    async def _answer(
        self, request: Request, endpoint: str
    ) -> tuple[JSONResponse, int, tuple[int, ...]]:
        refused = self._refused(request)
        if refused is not None:
            return refused, 0, ()
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return error_response(413, f"the body has {declared} bytes, more than {limit}"), 0, ()
        body = await request.body()
        if len(body) > limit:
            return error_response(413, f"the body has {len(body)} bytes, more than {limit}"), 0, ()
        try:
            query = parse_query(
                body, endpoint=endpoint, max_texts=self.config.max_texts, n_refs=self.n_refs
            )
        except InputError as exc:
            return error_response(400, str(exc)), 0, ()
        reply = await self._send(query)
        if isinstance(reply, JSONResponse):
            return reply, 0, ()
        if reply.refused is not None:
            return error_response(400, reply.refused), 0, ()
        answers: Any = reply.answers[0] if query.single else list(reply.answers)
        return JSONResponse(answers), len(query.texts), reply.batch_sizes

    async def _send(self, query: QueryRequest) -> ScorerReply | JSONResponse:
        """The scorer's reply, sent again (up to ``attempts`` tries) when the replica dies."""
        attempts = self.config.attempts
        for attempt in range(attempts):
            try:
                reply: ScorerReply = await self.scorer.answer.remote(query)
                return reply
            except UNAVAILABLE as exc:
                return error_response(503, f"no scorer replica can take it now: {one_line(exc)}")
            except (RayTaskError, *REPLICA_LOST) as exc:
                if not _replica_lost(exc):
                    return error_response(500, f"the scorer failed: {one_line(exc)}")
                if attempt + 1 == attempts:
                    return error_response(
                        503, f"the scorer replica died under it {attempts} times: {one_line(exc)}"
                    )
                self.metrics.retried()
                await asyncio.sleep(min(RETRY_PAUSE_S * 2**attempt, 2.0))
        raise AssertionError("unreachable: every attempt returns")


__all__ = ["Frontend", "error_response", "one_line"]

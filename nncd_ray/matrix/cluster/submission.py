"""Submitting jobs to a Ray cluster's job server, with the cluster's token.

A thin layer over :class:`ray.job_submission.JobSubmissionClient` (HTTP to the head node's job
server, usually port 8265) that adds what the project needs on every submission:

- **Token authentication.** Ray 2.60 clusters started with ``RAY_AUTH_MODE=token`` answer 401 to a
  request without ``Authorization: Bearer <token>``. Ray's own client sends the token only when the
  *client* process also has ``RAY_AUTH_MODE=token``; here the token is sent whenever one is found,
  looked up in Ray's order: ``--token-file``, then ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH``,
  ``~/.ray/auth_token``. (A cluster without authentication ignores the header.)
- **Small uploads.** ``--working-dir`` is zipped and uploaded on every submission (Ray already
  skips what ``.gitignore`` lists); :data:`DEFAULT_EXCLUDES` also keeps out ``.git``, virtual
  environments, caches and stores.

The job's driver runs on the cluster with ``RAY_ADDRESS`` set, so ``compute_matrix`` there joins the
cluster rather than starting one; it is idempotent, so resubmitting the same command resumes the
same store.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from nncd_ray.errors import ClusterError, ConfigError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"
# gitwildmatch patterns (as in .gitignore), relative to the working dir
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git",
    ".venv",
    "venv",
    "**/__pycache__",
    "**/*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "*.egg-info",
    "**/*.zarr",
    "runs",
    "build",
    "dist",
)
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


@dataclass(frozen=True, kw_only=True)
class Connection:
    """Where the job server is and how to authenticate to it."""

    # job server URL, e.g. http://head:8265
    address: str
    # the bearer token, or None for a cluster without token authentication
    token: str | None
    # where the token came from (for messages; never the token itself)
    token_source: str

    def headers(self) -> dict[str, str]:
        return {} if self.token is None else {"Authorization": f"Bearer {self.token}"}


def resolve_address(address: str | None) -> str:
    """``--address``, else ``$RAY_API_SERVER_ADDRESS``, else an http ``$RAY_ADDRESS``, else
    :data:`DEFAULT_ADDRESS`. A bare ``host:port`` becomes ``http://host:port``."""
    candidates = (address, os.environ.get("RAY_API_SERVER_ADDRESS"))
    chosen = next((c for c in candidates if c), None)
    if chosen is None:
        ray_address = os.environ.get("RAY_ADDRESS", "")
        chosen = ray_address if ray_address.startswith(("http://", "https://")) else DEFAULT_ADDRESS
    if "://" not in chosen:
        chosen = f"http://{chosen}"
    if not chosen.startswith(("http://", "https://")):
        raise ConfigError(
            f"--address must be the job server's http(s) URL (e.g. {DEFAULT_ADDRESS}), not {chosen}"
        )
    return chosen.rstrip("/")


def _read_token(path: Path, source: str) -> str:
    try:
        token = path.expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the auth token from {source} ({path}): {exc}") from exc
    if not token:
        raise ConfigError(f"the auth token file {path} ({source}) is empty")
    return token


def find_token(token_file: str | None = None) -> tuple[str | None, str]:
    """(token, where it came from), in Ray's order of precedence; (None, "none") if none."""
    if token_file:
        return _read_token(Path(token_file), "--token-file"), f"--token-file {token_file}"
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN"
    env_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if env_path:
        return _read_token(
            Path(env_path), "$RAY_AUTH_TOKEN_PATH"
        ), f"$RAY_AUTH_TOKEN_PATH={env_path}"
    if DEFAULT_TOKEN_PATH.is_file():
        return _read_token(DEFAULT_TOKEN_PATH, "Ray's default path"), str(DEFAULT_TOKEN_PATH)
    return None, "none"


def connect(address: str | None = None, token_file: str | None = None) -> Connection:
    token, source = find_token(token_file)
    return Connection(address=resolve_address(address), token=token, token_source=source)


def client(connection: Connection) -> JobSubmissionClient:
    """A job-submission client that authenticates; ClusterError if the server cannot be reached
    or refuses the token."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(connection.address, headers=connection.headers())
    except AuthenticationError as exc:
        hint = (
            "no token was found: pass --token-file, or set RAY_AUTH_TOKEN_PATH"
            if connection.token is None
            else f"the token from {connection.token_source} was refused"
        )
        raise ClusterError(f"the job server at {connection.address} needs a token: {hint}") from exc
    except (ConnectionError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(
            f"cannot reach the Ray job server at {connection.address}: {first}"
        ) from exc


def runtime_env(
    *,
    working_dir: str | None,
    excludes: Sequence[str] = (),
    env_vars: Mapping[str, str] | None = None,
    default_excludes: bool = True,
) -> dict[str, Any]:
    """The job's runtime_env: the uploaded working dir with its excludes, and env vars."""
    env: dict[str, Any] = {}
    if working_dir is not None:
        path = Path(working_dir).expanduser()
        if not path.is_dir():
            raise ConfigError(f"--working-dir {working_dir} is not a directory")
        env["working_dir"] = str(path.resolve())
        patterns = [*(DEFAULT_EXCLUDES if default_excludes else ()), *excludes]
        if patterns:
            env["excludes"] = patterns
    elif excludes:
        raise ConfigError("--exclude applies to --working-dir uploads; add --working-dir")
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def parse_env_vars(items: Sequence[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` strings -> dict (ConfigError on a malformed one)."""
    result: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env takes KEY=VALUE, not {item!r}")
        result[key] = value
    return result


def submit(
    job_client: JobSubmissionClient,
    command: Sequence[str],
    *,
    env: Mapping[str, Any],
    submission_id: str | None = None,
    entrypoint_num_cpus: float | None = None,
    entrypoint_num_gpus: float | None = None,
) -> str:
    """Submit ``command`` (argv words, quoted for the shell) and return the job id."""
    if not command:
        raise ConfigError("no command to run: nncd submit [options] -- python jobs/matrix.py ...")
    try:
        job_id: str = job_client.submit_job(
            entrypoint=shlex.join(command),
            runtime_env=dict(env) or None,
            submission_id=submission_id,
            entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_num_gpus=entrypoint_num_gpus,
        )
    except RuntimeError as exc:
        raise ClusterError(f"the job server refused the job: {exc}") from exc
    return job_id


def status(job_client: JobSubmissionClient, job_id: str) -> dict[str, Any]:
    """The job's details (status, message, entrypoint, times in ms since the epoch)."""
    try:
        info = job_client.get_job_info(job_id)
    except RuntimeError as exc:
        raise ClusterError(f"no job {job_id} on this cluster ({exc})") from exc
    return {
        "job_id": job_id,
        "status": str(info.status.value if hasattr(info.status, "value") else info.status),
        "message": info.message,
        "entrypoint": info.entrypoint,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "driver_exit_code": getattr(info, "driver_exit_code", None),
    }


def wait(
    job_client: JobSubmissionClient,
    job_id: str,
    *,
    timeout_s: float | None = None,
    poll_s: float = 2,
) -> str:
    """Poll until the job ends; its final status. ClusterError when ``timeout_s`` passes first."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        state = status(job_client, job_id)["status"]
        if state in TERMINAL_STATES:
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise ClusterError(f"job {job_id} is still {state} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def follow_logs(job_client: JobSubmissionClient, job_id: str, out: TextIO | None = None) -> None:
    """Stream the job's driver log to ``out`` (default: stdout) until the job ends."""
    stream = sys.stdout if out is None else out

    async def _tail() -> None:
        async for lines in job_client.tail_job_logs(job_id):
            stream.write(lines)
            stream.flush()

    asyncio.run(_tail())


def logs(job_client: JobSubmissionClient, job_id: str) -> str:
    try:
        text: str = job_client.get_job_logs(job_id)
    except RuntimeError as exc:
        raise ClusterError(f"no logs for job {job_id} ({exc})") from exc
    return text


def stop(job_client: JobSubmissionClient, job_id: str) -> bool:
    """Ask the job to stop; False if it had already ended."""
    try:
        stopped: bool = job_client.stop_job(job_id)
    except RuntimeError as exc:
        raise ClusterError(f"cannot stop job {job_id} ({exc})") from exc
    return stopped


def list_jobs(job_client: JobSubmissionClient) -> list[dict[str, Any]]:
    jobs = []
    for job in job_client.list_jobs():
        jobs.append(
            {
                "job_id": job.submission_id or job.job_id,
                "status": str(job.status.value if hasattr(job.status, "value") else job.status),
                "entrypoint": job.entrypoint,
                "start_time": job.start_time,
            }
        )
    return sorted(jobs, key=lambda job: job["start_time"] or 0)


__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_EXCLUDES",
    "TERMINAL_STATES",
    "Connection",
    "client",
    "connect",
    "find_token",
    "follow_logs",
    "list_jobs",
    "logs",
    "parse_env_vars",
    "resolve_address",
    "runtime_env",
    "status",
    "stop",
    "submit",
    "wait",
]

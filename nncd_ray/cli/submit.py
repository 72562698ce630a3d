"""``nncd submit``: run a command as a Ray job on a cluster, and follow, inspect or stop jobs.

    nncd submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/matrix.py --protocol agnews-small --compressor gzip --store s3://b/m.zarr
    nncd submit status JOB_ID        # status and message (--json for all details)
    nncd submit logs JOB_ID          # the driver's log (--follow to stream it)
    nncd submit stop JOB_ID
    nncd submit list

Everything after ``--`` is the job's command, run on the cluster's head node with the Python of
the cluster (its ``ray start``); with ``--working-dir`` that directory is uploaded first (minus
``.git``, virtual environments, caches and stores) and becomes the job's current directory.

Token authentication (on for clusters started with RAY_AUTH_MODE=token): the token comes from
``--token-file``, else ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, the
same order as Ray's. The address comes from ``--address``, else ``$RAY_API_SERVER_ADDRESS``, else
http://127.0.0.1:8265.

Resubmitting the same matrix command resumes its store: finished tiles are not recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from nncd_ray.errors import ConfigError
from nncd_ray.matrix.cluster import submission as jobs

ACTIONS: tuple[str, ...] = ("status", "logs", "stop", "list")
USAGE = """nncd submit [--address URL] [--token-file PATH] [--working-dir DIR] [...] -- COMMAND ...
       nncd submit {status,logs,stop} JOB_ID [--address URL] [--token-file PATH]
       nncd submit list [--address URL] [--token-file PATH]"""


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument(
        "--address",
        metavar="URL",
        help="job server of the cluster's head node (default: $RAY_API_SERVER_ADDRESS, else "
        f"{jobs.DEFAULT_ADDRESS})",
    )
    group.add_argument(
        "--token-file",
        metavar="PATH",
        help="file holding the cluster's auth token (default: $RAY_AUTH_TOKEN, "
        "$RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)",
    )


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "submit",
        help="run a command as a Ray job on a cluster; status, logs, stop, list",
        description=__doc__,
        usage=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection_arguments(parser)
    job = parser.add_argument_group("job")
    job.add_argument(
        "--working-dir",
        metavar="DIR",
        help="upload DIR and run the command in it (e.g. . for this checkout)",
    )
    job.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also leave PATTERN (.gitignore syntax) out of the upload (repeatable)",
    )
    job.add_argument(
        "--no-default-excludes",
        action="store_true",
        help="upload .git, virtual environments, caches and stores too",
    )
    job.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable of the job (repeatable)",
    )
    job.add_argument("--job-id", metavar="ID", help="submission id (default: Ray's)")
    job.add_argument(
        "--entrypoint-num-cpus", type=float, metavar="N", help="CPUs reserved for the driver"
    )
    job.add_argument(
        "--entrypoint-num-gpus", type=float, metavar="N", help="GPUs reserved for the driver"
    )
    job.add_argument(
        "--no-wait",
        action="store_true",
        help="return after submitting instead of streaming the log until the job ends",
    )
    parser.add_argument(
        "words",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND ...",
        help="the job's command after --, or one of: " + ", ".join(ACTIONS),
    )
    return parser


def _action_parser(action: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"nncd submit {action}",
        description={
            "status": "Show a job's status (exit 0 SUCCEEDED, 1 FAILED/STOPPED, 3 not finished).",
            "logs": "Print a job's driver log.",
            "stop": "Stop a job.",
            "list": "List the cluster's jobs.",
        }[action],
    )
    if action != "list":
        parser.add_argument("job_id", metavar="JOB_ID")
    _add_connection_arguments(parser)
    if action == "logs":
        parser.add_argument("--follow", "-f", action="store_true", help="stream until it ends")
    if action in ("status", "list"):
        parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    words: list[str] = list(args.words)
    if words and words[0] == "--":
        return _run_job(args, words[1:])
    if words and words[0] in ACTIONS:
        return _run_action(words[0], words[1:], args)
    if not words:
        raise ConfigError(
            "nothing to do: nncd submit [options] -- COMMAND ..., or nncd submit "
            f"{{{','.join(ACTIONS)}}} ..."
        )
    raise ConfigError(
        f"put -- before the job's command (nncd submit [options] -- {' '.join(words[:3])} ...), "
        f"or use one of: {', '.join(ACTIONS)}"
    )


def _run_job(args: argparse.Namespace, command: Sequence[str]) -> int:
    connection = jobs.connect(args.address, args.token_file)
    env = jobs.runtime_env(
        working_dir=args.working_dir,
        excludes=args.exclude,
        env_vars=jobs.parse_env_vars(args.env),
        default_excludes=not args.no_default_excludes,
    )
    job_client = jobs.client(connection)
    job_id = jobs.submit(
        job_client,
        command,
        env=env,
        submission_id=args.job_id,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
        entrypoint_num_gpus=args.entrypoint_num_gpus,
    )
    print(f"submitted job {job_id} to {connection.address}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        return 0
    jobs.follow_logs(job_client, job_id)
    state = jobs.wait(job_client, job_id, poll_s=1.0)
    print(f"job {job_id} {state}", file=sys.stderr)
    return 0 if state == "SUCCEEDED" else 1


def _run_action(action: str, rest: Sequence[str], outer: argparse.Namespace) -> int:
    ns = _action_parser(action).parse_args(list(rest))
    connection = jobs.connect(ns.address or outer.address, ns.token_file or outer.token_file)
    job_client = jobs.client(connection)
    if action == "list":
        listing = jobs.list_jobs(job_client)
        if ns.json:
            print(json.dumps(listing, indent=2))
        for job in [] if ns.json else listing:
            print(f"{job['job_id']}  {job['status']:<9}  {job['entrypoint']}")
        return 0
    if action == "status":
        info = jobs.status(job_client, ns.job_id)
        if ns.json:
            print(json.dumps(info, indent=2))
        else:
            message = f"  {info['message']}" if info["message"] else ""
            print(f"{ns.job_id}  {info['status']}{message}")
        if info["status"] == "SUCCEEDED":
            return 0
        return 1 if info["status"] in jobs.TERMINAL_STATES else 3
    if action == "logs":
        if ns.follow:
            jobs.follow_logs(job_client, ns.job_id)
        else:
            sys.stdout.write(jobs.logs(job_client, ns.job_id))
        return 0
    stopped = jobs.stop(job_client, ns.job_id)
    print(f"job {ns.job_id} {'stopping' if stopped else 'had already ended'}")
    return 0

"""Shared start of the job entrypoints: run one ``nncd`` subcommand with this process's arguments.

Works from a pip-installed environment and from a bare checkout (for example a Ray job's uploaded
working dir run from another directory), where the package beside ``jobs/`` is used.
"""

from __future__ import annotations

import sys
from pathlib import Path


def run(command: str, argv: list[str] | None = None) -> int:
    """``nncd COMMAND ARGV…``; ``argv`` defaults to the process's own arguments."""
    try:
        from nncd_ray.cli.main import main as nncd
    except ModuleNotFoundError as exc:
        if exc.name != "nncd_ray":
            raise
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from nncd_ray.cli.main import main as nncd
    return nncd([command, *(sys.argv[1:] if argv is None else argv)])

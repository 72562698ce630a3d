#!/usr/bin/env python3
"""Ray job entrypoint: a study of several compressors over one or more datasets.

Takes the options of ``nncd study`` (``python jobs/study.py --help``). Each matrix of the study is
an ordinary resumable store, so resubmitting the same study computes only what is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

COMMAND = "study"


def main(argv: list[str] | None = None) -> int:
    try:
        from nncd_ray.cli.main import main as nncd
    except ModuleNotFoundError as exc:
        if exc.name != "nncd_ray":
            raise
        # a checkout that is not pip-installed (e.g. a Ray job's uploaded working dir run from
        # another directory): use the package beside jobs/
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from nncd_ray.cli.main import main as nncd
    return nncd([COMMAND, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

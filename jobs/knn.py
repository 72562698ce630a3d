#!/usr/bin/env python3
"""Ray job entrypoint: k-NN classification report from a finished matrix store.

Takes the options of ``nncd knn`` (``python jobs/knn.py --help``), for example::

    ray job submit --working-dir . -- python jobs/knn.py --store /shared/m.zarr --json report.json

Reads the store in row blocks on the driver (no Ray actors); it only reads, so running it again
gives the same report.
"""

from __future__ import annotations

import sys
from pathlib import Path

COMMAND = "knn"


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

#!/usr/bin/env python3
"""Ray job entrypoint: compute the missing tiles of a matrix of code lengths into a store.

Takes the options of ``nncd matrix`` (``python jobs/matrix.py --help``), for example::

    ray job submit --working-dir . -- python jobs/matrix.py \\
        --protocol agnews-small --data /data/agnews/test.csv --compressor gzip \\
        --store /shared/m.zarr

Inside a Ray job ``RAY_ADDRESS`` names the job's cluster, so the engine joins that cluster (it
starts a private one only when run outside any). Idempotent: every finished tile has a marker in
the store, so running the same command again (after a failure, a preemption or ``ray job stop``)
computes only the missing tiles, and a store computed with other settings is refused, not mixed.
"""

from __future__ import annotations

import sys
from pathlib import Path

COMMAND = "matrix"


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

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

from _entry import run  # jobs/ is on sys.path when this file is run as a script

if __name__ == "__main__":
    sys.exit(run("matrix"))

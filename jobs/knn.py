#!/usr/bin/env python3
"""Ray job entrypoint: k-NN classification report from a finished matrix store.

Takes the options of ``nncd knn`` (``python jobs/knn.py --help``), for example::

    ray job submit --working-dir . -- python jobs/knn.py --store /shared/m.zarr --json report.json

Reads the store in row blocks on the driver (no Ray actors); it only reads, so running it again
gives the same report.
"""

from __future__ import annotations

import sys

from _entry import run  # jobs/ is on sys.path when this file is run as a script

if __name__ == "__main__":
    sys.exit(run("knn"))

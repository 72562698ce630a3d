#!/usr/bin/env python3
"""Entrypoint: train the small embedded language model (options of ``nncd train``).

``python jobs/train_lm.py --help``; the shipped model was made with the command in
``nncd_ray/embedded/MODEL_CARD.md``::

    python jobs/train_lm.py --out /tmp/lm --steps 4400 --copy-circuit \
        --early-steps 400 --early-lr 5e-4 --early-embedding-lr-scale 0.1 --ramp-steps 100 \
        --lr 1.5e-3 --embedding-lr-scale 1.0 --lock-circuit
"""

from __future__ import annotations

import sys

from _entry import run  # jobs/ is on sys.path when this file is run as a script

if __name__ == "__main__":
    sys.exit(run("train"))

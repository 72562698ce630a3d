#!/usr/bin/env python3
"""Entrypoint: train the small embedded language model (options of ``nncd train``).

``python jobs/train_lm.py --help``; the shipped model was made with the command in
``nncd_ray/embedded/MODEL_CARD.md``, for example::

    python jobs/train_lm.py --out /tmp/lm --steps 4400
"""

from __future__ import annotations

import sys

from _entry import run  # jobs/ is on sys.path when this file is run as a script

if __name__ == "__main__":
    sys.exit(run("train"))

#!/usr/bin/env python3
"""Entrypoint: train the small embedded language model (options of ``nncd train``).

``python jobs/train_lm.py --help``; the shipped model was made with the command in
``nncd_ray/embedded/MODEL_CARD.md``, for example::

    python jobs/train_lm.py --out /tmp/lm --steps 700
"""

from __future__ import annotations

import sys
from pathlib import Path

COMMAND = "train"


def main(argv: list[str] | None = None) -> int:
    try:
        from nncd_ray.cli.main import main as nncd
    except ModuleNotFoundError as exc:
        if exc.name != "nncd_ray":
            raise
        # a checkout that is not pip-installed: use the package beside jobs/
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from nncd_ray.cli.main import main as nncd
    return nncd([COMMAND, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

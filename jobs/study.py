#!/usr/bin/env python3
"""Ray job entrypoint: a study of several compressors over one or more datasets.

Takes the options of ``nncd study`` (``python jobs/study.py --help``). Each matrix of the study is
an ordinary resumable store, so resubmitting the same study computes only what is missing.
"""

from __future__ import annotations

import sys

from _entry import run  # jobs/ is on sys.path when this file is run as a script

if __name__ == "__main__":
    sys.exit(run("study"))

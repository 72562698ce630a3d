"""Where tests find the checkout and the shared data, wherever in ``tests/`` they live."""

from __future__ import annotations

from pathlib import Path

import pytest

# the project's checkout (holds nncd_ray/, jobs/, cluster/, docs/)
ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (never copied into the repo)
SHARED_DATA = ROOT.parent / "shared" / "data"
AGNEWS_CSV = SHARED_DATA / "agnews" / "test.csv"
GUTENBERG = SHARED_DATA / "gutenberg"

# for tests that read the shared data: skipped, with the path, in a checkout without it beside
needs_agnews = pytest.mark.skipif(not AGNEWS_CSV.exists(), reason=f"no AG News at {AGNEWS_CSV}")
needs_books = pytest.mark.skipif(
    not any(GUTENBERG.glob("*.txt")), reason=f"no Gutenberg books in {GUTENBERG}"
)

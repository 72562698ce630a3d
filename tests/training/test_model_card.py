"""The embedded model's card states what the shipped weights do: one of its figures, recomputed.

The card (``nncd_ray/embedded/MODEL_CARD.md``) gives the held-out bits per byte of every book to
four decimals, as ``nncd train --evaluate-only`` prints them. pg5200's (the smallest slice, 5,959
held-out bytes) is
recomputed here through the same code and compared to the digit, so retrained weights, a changed
tokenizer or a changed scorer cannot leave the card behind.
"""

from __future__ import annotations

import re

import pytest
from paths import GUTENBERG

from nncd_ray.embedded import model_dir
from nncd_ray.scorers.lm import LMScorer
from nncd_ray.training.bits_per_byte import heldout_bits
from nncd_ray.training.books import load_books

CARD = model_dir().parent / "MODEL_CARD.md"
BOOK = "pg5200"


def stated_figure(book: str) -> float:
    """The card's held-out bits per byte of ``book`` (the per-book line, 4 decimals)."""
    text = " ".join(CARD.read_text(encoding="utf-8").split())
    line = re.search(r"Held-out Gutenberg per book \(LM[^)]*\): (.*?)\.\s", text)
    assert line is not None, "the card has no per-book held-out line"
    figure = re.search(rf"\b{book} (\d\.\d{{4}})\b", line.group(1))
    assert figure is not None, f"the card states no 4-decimal figure for {book}"
    return float(figure.group(1))


@pytest.mark.skipif(not (GUTENBERG / f"{BOOK}.txt").exists(), reason="no Gutenberg books")
def test_the_card_states_what_the_shipped_model_does() -> None:
    (book,) = [b for b in load_books(GUTENBERG) if b.name == BOOK]
    scorer = LMScorer(None, device="cpu", dtype="fp32")
    bits = heldout_bits(scorer, book.heldout)
    assert round(bits / len(book.heldout.encode("utf-8")), 4) == stated_figure(BOOK)

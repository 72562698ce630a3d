"""Texts the LM tests score: a long row and column, one-character ones, and non-ASCII text."""

ROWS = [
    "Stocks fell sharply on Wall Street as oil prices rose for the third day and traders "
    "worried about supplies from the Gulf after the storm.",
    "x",
    "Café, naïve, 日本語 — unicode survives byte-level BPE, and a few more words to be long.",
]
COLS = [
    "A second team sets a launch date for human spaceflight after the first team failed to "
    "reach orbit in time for the prize.",
    "ok",
    "Sox win the game in overtime after a late goal by the veteran striker in the final minute.",
]

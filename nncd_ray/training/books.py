"""The Gutenberg books, each split by bytes into the part trained on and the held-out part.

Every book is cut at ``floor(size × (1 − holdout_fraction))``, moved back to a UTF-8 character
boundary, so the held-out part is never smaller than asked and the two never share a byte. Only
the training part is ever seen by the tokenizer and the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nncd_ray.errors import ConfigError, DatasetNotFound

# the books in ../shared/data/gutenberg beside the checkout (the embedded model's training data)
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "gutenberg"


@dataclass(frozen=True, kw_only=True)
class BookSplit:
    """One book cut by bytes: ``train`` is bytes [0, cut), ``heldout`` is bytes [cut, end)."""

    name: str
    train: str
    heldout: str
    cut_byte: int  # first held-out byte offset in the UTF-8 file
    total_bytes: int


def split_book(data: bytes, holdout_fraction: float) -> tuple[int, str, str]:
    """(cut, train text, held-out text) for one UTF-8 book.

    ``cut = floor(len * (1 - holdout_fraction))``, moved back while it falls inside a multi-byte
    character; train = bytes[:cut], held-out = bytes[cut:], so the two never share a byte.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ConfigError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    cut = int(len(data) * (1.0 - holdout_fraction))
    while 0 < cut < len(data) and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut, data[:cut].decode("utf-8"), data[cut:].decode("utf-8")


def load_books(
    data_dir: Path, holdout_fraction: float = 0.05, max_books: int | None = None
) -> list[BookSplit]:
    """Every ``*.txt`` in ``data_dir`` (sorted by name), split into training and held-out text."""
    paths = sorted(Path(data_dir).glob("*.txt"))
    if not paths:
        raise DatasetNotFound(f"no *.txt books in {data_dir}; pass --data-dir")
    books = []
    for path in paths[:max_books]:
        data = path.read_bytes()
        cut, train, heldout = split_book(data, holdout_fraction)
        books.append(
            BookSplit(
                name=path.stem, train=train, heldout=heldout, cut_byte=cut, total_bytes=len(data)
            )
        )
    return books

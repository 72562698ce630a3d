"""The scorer protocol: code lengths in bits for documents and for (x, y) pairs.

Contract (``shared/DESIGN.md`` §2): ``C(x)`` is the code length of one document, ``C(xy)`` the code
length of x followed by y. Every length is in **bits**, as float64 on the way out (stores keep
float32). ``scored_bytes`` says how many UTF-8 bytes of each document a code length covers: all of
them, unless the compressor truncates (an LM cuts documents longer than its context), and bits
per byte divides by these bytes, never by bytes that were not compressed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, kw_only=True)
class ScorerSpec:
    """A picklable recipe for a scorer, so Ray actors can build their own copy in ``__init__``."""

    # registry key, one of ``nncd_ray.scorers.available()``
    name: str
    # keyword arguments of the scorer's constructor (JSON-compatible values only)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TileScores:
    """Code lengths of one tile of the matrix, all in bits.

    ``row_bits``: (n_rows,) C(x) of the row documents; ``col_bits``: (n_cols,) C(y) of the column
    documents; ``pair_bits``: (n_rows, n_cols) C(x_i y_j), row document first.
    """

    row_bits: NDArray[np.float64]
    col_bits: NDArray[np.float64]
    pair_bits: NDArray[np.float64]
    # tokens (LM) or bytes (classical) that went through the compressor (for speed reports)
    work_units: int = 0


@runtime_checkable
class Scorer(Protocol):
    """What every compressor offers. Implementations live one per module in ``nncd_ray.scorers``."""

    name: str

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description of everything that changes the numbers (store resume checks)."""
        ...

    def document_bits(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """C(x) for each text: ``(len(texts),) float64`` bits."""
        ...

    def pair_bits(self, rows: Sequence[str], cols: Sequence[str]) -> NDArray[np.float64]:
        """C(x y) for every row x and column y: ``(len(rows), len(cols)) float64`` bits."""
        ...

    def score_tile(self, rows: Sequence[str], cols: Sequence[str]) -> TileScores:
        """Everything one tile of the matrix needs, computed with as little work as possible."""
        ...

    def scored_bytes(self, texts: Sequence[str]) -> NDArray[np.int64]:
        """UTF-8 bytes of each text that its code length covers: ``(len(texts),) int64``; fewer
        than the text's bytes exactly when the compressor truncated it."""
        ...


class BaseScorer(ABC):
    """Shared defaults; subclasses override what they can do faster."""

    name: str = "base"

    def fingerprint(self) -> dict[str, Any]:
        return {"compressor": self.name}

    @abstractmethod
    def document_bits(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """C(x) for each text: ``(len(texts),) float64`` bits."""

    @abstractmethod
    def pair_bits(self, rows: Sequence[str], cols: Sequence[str]) -> NDArray[np.float64]:
        """C(x y) for every row x and column y: ``(len(rows), len(cols)) float64`` bits."""

    def scored_bytes(self, texts: Sequence[str]) -> NDArray[np.int64]:
        """UTF-8 bytes of each text (``(len(texts),) int64``): classical compressors see every
        byte. Scorers that truncate override this."""
        return utf8_lengths(texts)

    def score_tile(self, rows: Sequence[str], cols: Sequence[str]) -> TileScores:
        return TileScores(
            row_bits=self.document_bits(rows),
            col_bits=self.document_bits(cols),
            pair_bits=self.pair_bits(rows, cols),
            work_units=sum(len(t.encode("utf-8")) for t in rows) * max(len(cols), 1)
            + sum(len(t.encode("utf-8")) for t in cols) * max(len(rows), 1),
        )


def utf8_lengths(texts: Sequence[str]) -> NDArray[np.int64]:
    """``(len(texts),) int64`` UTF-8 bytes of each text."""
    return np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))

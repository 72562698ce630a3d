"""A cheap deterministic stand-in compressor, for running the whole pipeline without a model.

Like lm-evaluation-harness's dummy backend, it lets tests and benchmarks exercise tiling, Ray
scheduling, storage and resume at the speed of a matrix product. Its code lengths (all in bits):

- ``C(x) = bits_per_byte · bytes(x)`` (UTF-8 bytes);
- ``C(xy) = C(x) + C(y) − credit(x, y)``, floored at ``max(C(x), C(y))``, where the credit is
  half of ``bits_per_byte`` times the bytes of x's distinct words that hash (crc32, 64 buckets)
  into a bucket that y also uses. Related texts therefore get smaller NCDs, and
  ``C(xy) ≠ C(yx)`` in general, as with real compressors (which exercises ``ncd-min``).
- ``truncate_bytes``: when set, each document is cut to its first ``truncate_bytes`` UTF-8 bytes
  (whole characters) before anything above, the way an LM cuts documents longer than its context;
  ``scored_bytes`` then reports the kept bytes. It changes the numbers, so it is in the
  fingerprint (only when set, so stores made without it resume as before).

Fault injection, for the engine's fault-tolerance tests (none of these change the numbers, so
none is in the fingerprint). Each acts once per ``score_tile`` call, and once per call of
``document_bits`` from outside (a tile of a sparse store makes one such call, for its documents):

- ``crash_dir`` + ``crashes``: while fewer than ``crashes`` marker files exist in ``crash_dir``, a
  ``score_tile`` call that is not this scorer's first claims the next marker atomically
  (``O_CREAT | O_EXCL``) and kills its own process with ``os._exit(1)``: exactly ``crashes``
  kills across a whole job, however many processes race, and every process scores one tile before
  it may die.
- ``delay_s``: sleep this many seconds in each ``score_tile`` call (a slow scorer, to kill a driver
  mid-job).
- ``fail_on``: ``score_tile`` raises :class:`InjectedFailure` for any tile holding a document that
  contains this substring (a tile that fails on every attempt).
- ``call_dir``: each ``score_tile`` call that returns leaves one small JSON file there, so tests can
  count how often tiles were computed across processes and restarts.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import ConfigError
from nncd_ray.scorers.base import BaseScorer, TileScores

# hash buckets of the word features; in the fingerprint because it changes the numbers
BUCKETS = 64
# bump when the formula changes, so old stores refuse to resume
FORMULA_VERSION = 1


class InjectedFailure(RuntimeError):
    """Raised on purpose by the synthetic scorer (``fail_on``)."""


def text_checksum(text: str) -> int:
    """crc32 of a text's UTF-8 bytes; how ``call_dir`` records name the first row and column."""
    return zlib.crc32(text.encode("utf-8"))


class SyntheticScorer(BaseScorer):
    """Deterministic fake compressor; see the module docstring for the formula and fault options."""

    name = "synthetic"

    def __init__(
        self,
        bits_per_byte: float = 8.0,
        crash_dir: str | None = None,
        crashes: int = 0,
        delay_s: float = 0.0,
        fail_on: str | None = None,
        call_dir: str | None = None,
        truncate_bytes: int | None = None,
    ) -> None:
        if not bits_per_byte > 0:
            raise ConfigError(f"bits_per_byte must be positive, not {bits_per_byte}")
        if truncate_bytes is not None and (
            isinstance(truncate_bytes, bool)
            or not isinstance(truncate_bytes, int)
            or truncate_bytes < 1
        ):
            raise ConfigError(f"truncate_bytes must be a positive integer, not {truncate_bytes!r}")
        if crashes < 0 or delay_s < 0:
            raise ConfigError("crashes and delay_s must not be negative")
        if crashes and crash_dir is None:
            raise ConfigError("crashes needs crash_dir (where the crash markers are kept)")
        self.bits_per_byte = float(bits_per_byte)
        self.crash_dir = crash_dir
        self.crashes = int(crashes)
        self.delay_s = float(delay_s)
        self.fail_on = fail_on
        self.call_dir = call_dir
        self.truncate_bytes = truncate_bytes
        self._calls = 0
        # text -> (bytes, per-bucket bytes of distinct words, per-bucket presence); texts repeat
        # across the tiles of a row or column, so features are computed once per text
        self._features: dict[str, tuple[int, NDArray[np.float64], NDArray[np.float64]]] = {}

    def fingerprint(self) -> dict[str, Any]:
        fingerprint: dict[str, Any] = {
            "compressor": self.name,
            "bits_per_byte": self.bits_per_byte,
            "buckets": BUCKETS,
            "formula": FORMULA_VERSION,
        }
        if self.truncate_bytes is not None:
            fingerprint["truncate_bytes"] = self.truncate_bytes
        return fingerprint

    # -- code lengths ------------------------------------------------------------------------

    def _kept(self, text: str) -> str:
        """The part of ``text`` that is scored: all of it, or its first ``truncate_bytes`` UTF-8
        bytes without a partial character."""
        if self.truncate_bytes is None:
            return text
        return text.encode("utf-8")[: self.truncate_bytes].decode("utf-8", errors="ignore")

    def _feature(self, text: str) -> tuple[int, NDArray[np.float64], NDArray[np.float64]]:
        cached = self._features.get(text)
        if cached is None:
            kept = self._kept(text)
            weights = np.zeros(BUCKETS, dtype=np.float64)
            for word in set(kept.split()):
                encoded = word.encode("utf-8")
                weights[zlib.crc32(encoded) % BUCKETS] += len(encoded)
            cached = (len(kept.encode("utf-8")), weights, (weights > 0).astype(np.float64))
            self._features[text] = cached
        return cached

    def scored_bytes(self, texts: Sequence[str]) -> NDArray[np.int64]:
        """UTF-8 bytes of each text that its code length covers: ``(len(texts),) int64``."""
        return np.array([self._feature(t)[0] for t in texts], dtype=np.int64)

    def document_bits(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """C(x) for each text: ``(len(texts),) float64`` bits. The fault options act here too,
        once per call, as in ``score_tile``: a tile of a sparse store (candidate pruning) scores
        its documents in one such call and its pairs row by row with ``pair_bits``."""
        self._inject(texts, ())
        bits = self._bits(texts)
        if self.call_dir is not None:
            self._record_call(self.call_dir, texts, ())
        return bits

    def _bits(self, texts: Sequence[str]) -> NDArray[np.float64]:
        sizes = np.array([self._feature(t)[0] for t in texts], dtype=np.float64)
        return self.bits_per_byte * sizes

    def pair_bits(self, rows: Sequence[str], cols: Sequence[str]) -> NDArray[np.float64]:
        """C(x y) for every row x and column y: ``(len(rows), len(cols)) float64`` bits."""
        row_bits = self._bits(rows)
        col_bits = self._bits(cols)
        weights = np.stack([self._feature(t)[1] for t in rows])  # (R, BUCKETS)
        presence = np.stack([self._feature(t)[2] for t in cols])  # (C, BUCKETS)
        credit = 0.5 * self.bits_per_byte * (weights @ presence.T)
        pair = row_bits[:, None] + col_bits[None, :] - credit
        return np.maximum(pair, np.maximum(row_bits[:, None], col_bits[None, :]))

    def _inject(self, rows: Sequence[str], cols: Sequence[str]) -> None:
        """The fault options (see the module docstring), once per scoring call."""
        self._calls += 1
        if self.crash_dir is not None and self._calls > 1:
            self._maybe_crash(self.crash_dir)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and any(self.fail_on in t for t in (*rows, *cols)):
            raise InjectedFailure(
                f"synthetic scorer told to fail on documents containing {self.fail_on!r}"
            )

    def score_tile(self, rows: Sequence[str], cols: Sequence[str]) -> TileScores:
        self._inject(rows, cols)
        row_bytes = sum(self._feature(t)[0] for t in rows)
        col_bytes = sum(self._feature(t)[0] for t in cols)
        scores = TileScores(
            row_bits=self._bits(rows),
            col_bits=self._bits(cols),
            pair_bits=self.pair_bits(rows, cols),
            work_units=row_bytes * len(cols) + col_bytes * len(rows),
        )
        if self.call_dir is not None:
            self._record_call(self.call_dir, rows, cols)
        return scores

    # -- fault injection ---------------------------------------------------------------------

    def _maybe_crash(self, crash_dir: str) -> None:
        os.makedirs(crash_dir, exist_ok=True)
        for number in range(self.crashes):
            marker = os.path.join(crash_dir, f"crash-{number:04d}")
            try:
                handle = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            os.write(handle, f"{os.getpid()}\n".encode())
            os.close(handle)
            os._exit(1)  # a hard crash: no cleanup, no exception, like a segfaulting CUDA kernel

    def _record_call(self, call_dir: str, rows: Sequence[str], cols: Sequence[str]) -> None:
        os.makedirs(call_dir, exist_ok=True)
        record = {
            "pid": os.getpid(),
            "call": self._calls,
            "first_row": text_checksum(rows[0]),
            "first_col": text_checksum(cols[0]) if cols else None,
            "rows": len(rows),
            "cols": len(cols),
        }
        path = os.path.join(call_dir, f"{os.getpid()}-{self._calls}-{uuid.uuid4().hex[:8]}.json")
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(handle, json.dumps(record).encode())
        finally:
            os.close(handle)

"""Classical compressors as scorers: gzip, bz2, lzma (xz) and zstd.

Contract (``shared/DESIGN.md`` §2), all lengths in bits:
``C(x) = 8 · len(compress(utf8(x)))`` and ``C(xy) = 8 · len(compress(utf8(x) + b" " + utf8(y)))``,
where ``compress`` is, byte for byte, ``gzip.compress(data, level, mtime=0)`` (other mtimes change
no length: the header is a fixed 10 bytes), ``bz2.compress(data, level)``,
``lzma.compress(data, preset=preset)`` (xz container) and
``zstandard.ZstdCompressor(level=level).compress(data)``.

gzip uses Schutte's trick for long rows: deflate ``x + b" "`` once per row into a
``zlib.compressobj`` and ``.copy()`` that state for every column y. Deflate with ``Z_NO_FLUSH`` at
levels 1-9 decides nothing until it has enough look-ahead, so its output does not depend on how the
input was split into calls, and the lengths equal those of one-shot compression (the tests check
this). Level 0 (stored blocks) may depend on the split, so it always takes the one-shot path.
"""

from __future__ import annotations

import bz2
import ctypes
import lzma
import zlib
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import ConfigError, InputError
from nncd_ray.scorers.base import BaseScorer, TileScores

# the byte placed between x and y in C(xy)
SEPARATOR = b" "
# gzip container (header + deflate + crc32/size trailer), as gzip.compress writes it
_GZIP_WBITS = 31


def encode_texts(texts: Sequence[str]) -> list[bytes]:
    """UTF-8 bytes of each text; a text that cannot be encoded (lone surrogate) is an InputError."""
    encoded: list[bytes] = []
    for position, text in enumerate(texts):
        try:
            encoded.append(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InputError(
                f"document number {position} cannot be encoded as UTF-8 ({exc.reason} at "
                f"character {exc.start})"
            ) from exc
    return encoded


def _native_version(module_file: str | None, symbol: str) -> str:
    """Version of the C library behind a stdlib extension module (``"unknown"`` if hidden)."""
    if module_file is None:
        return "unknown"
    try:
        function = getattr(ctypes.CDLL(module_file), symbol)
    except (OSError, AttributeError):
        return "unknown"
    function.restype = ctypes.c_char_p
    value = function()
    return value.decode("ascii", "replace") if isinstance(value, bytes) else "unknown"


@dataclass(frozen=True, kw_only=True)
class LevelRange:
    """The ``--level`` of one classical compressor: its constructor option and accepted range."""

    option: str
    low: int
    high: int
    default: int

    def describe(self, compressor: str) -> str:
        """``"gzip: level 0 to 9 (9)"``: what ``--level`` means and accepts for ``compressor``."""
        return f"{compressor}: {self.option} {self.low} to {self.high} ({self.default})"

    def check(self, compressor: str, value: Any) -> int:
        """``value`` if it is an integer in range, else ConfigError (the scorers' own message)."""
        return _check_int(self.option, value, self.low, self.high, compressor)


# what --level sets for each classical compressor, and what the compressor accepts (zstd: its
# negative "fast" levels down to -131072, up to ZSTD_maxCLevel() = 22)
LEVELS: dict[str, LevelRange] = {
    "gzip": LevelRange(option="level", low=0, high=9, default=9),
    "bz2": LevelRange(option="level", low=1, high=9, default=9),
    "lzma": LevelRange(option="preset", low=0, high=9, default=6),
    "zstd": LevelRange(option="level", low=-(1 << 17), high=22, default=19),
}


def _check_int(name: str, value: Any, low: int, high: int, compressor: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"{compressor} {name} must be an integer from {low} to {high}, not {value!r}"
        )
    return value


class ClassicalScorer(BaseScorer):
    """Shared code of the byte compressors: one-shot compression of docs and of ``x + b" " + y``."""

    name = "classical"

    @abstractmethod
    def compressed_size(self, data: bytes) -> int:
        """Bytes of ``compress(data)`` with this scorer's settings."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything that changes the output: level/preset, container, native library version."""

    def fingerprint(self) -> dict[str, Any]:
        return {
            "compressor": self.name,
            **self.settings(),
            "pair": "x + b' ' + y",
            "units": "bits = 8 * compressed bytes",
        }

    def document_bits(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """C(x) for each text: ``(len(texts),) float64`` bits."""
        sizes = [self.compressed_size(data) for data in encode_texts(texts)]
        return np.asarray(sizes, dtype=np.float64).reshape(len(sizes)) * 8.0

    def pair_bits(self, rows: Sequence[str], cols: Sequence[str]) -> NDArray[np.float64]:
        """C(x y) for every row x and column y: ``(len(rows), len(cols)) float64`` bits."""
        return self.score_tile_bytes(encode_texts(rows), encode_texts(cols), with_docs=False)[2]

    def score_tile(self, rows: Sequence[str], cols: Sequence[str]) -> TileScores:
        """C(x), C(y) and C(xy) of one tile; each document is compressed on its own exactly once."""
        row_bits, col_bits, pair_bits, work = self.score_tile_bytes(
            encode_texts(rows), encode_texts(cols), with_docs=True
        )
        return TileScores(
            row_bits=row_bits, col_bits=col_bits, pair_bits=pair_bits, work_units=work
        )

    def score_tile_bytes(
        self, rows: list[bytes], cols: list[bytes], *, with_docs: bool
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], int]:
        """(row_bits (R,), col_bits (C,), pair_bits (R, C), bytes compressed); doc bits are
        empty arrays unless ``with_docs``."""
        pair_sizes = np.zeros((len(rows), len(cols)), dtype=np.float64)
        work = 0
        for i, x in enumerate(rows):
            prefix = x + SEPARATOR
            for j, y in enumerate(cols):
                pair_sizes[i, j] = self.compressed_size(prefix + y)
                work += len(prefix) + len(y)
        row_sizes = np.zeros(len(rows) if with_docs else 0, dtype=np.float64)
        col_sizes = np.zeros(len(cols) if with_docs else 0, dtype=np.float64)
        if with_docs:
            for i, x in enumerate(rows):
                row_sizes[i] = self.compressed_size(x)
                work += len(x)
            for j, y in enumerate(cols):
                col_sizes[j] = self.compressed_size(y)
                work += len(y)
        return row_sizes * 8.0, col_sizes * 8.0, pair_sizes * 8.0, work


class GzipScorer(ClassicalScorer):
    """gzip (deflate in the gzip container), ``level`` 0-9 (default 9, as ``gzip -9``)."""

    name = "gzip"
    # Rows at least this long (bytes of x + b" ") use the prefix-copy trick. ``copy()`` duplicates
    # about 256 KiB of deflate state (window, hash chains, pending buffer), so for short rows a
    # fresh compression is faster: measured on this machine, break-even near 500-1000 bytes (AG
    # News documents average 235 bytes; at 250 bytes one-shot took 11 us and copy 19 us per pair,
    # at 8 kB 91 us against 30 us). Both paths give identical lengths; tests set 0 to force it.
    prefix_copy_min_bytes: int = 1024

    def __init__(self, level: int = 9) -> None:
        self.level = _check_int("level", level, LEVELS["gzip"].low, LEVELS["gzip"].high, self.name)

    def settings(self) -> dict[str, Any]:
        return {"level": self.level, "container": "gzip", "zlib": zlib.ZLIB_RUNTIME_VERSION}

    def compressed_size(self, data: bytes) -> int:
        # identical bytes to gzip.compress(data, level, mtime=0); other mtimes change no length
        return len(zlib.compress(data, self.level, _GZIP_WBITS))

    def score_tile_bytes(
        self, rows: list[bytes], cols: list[bytes], *, with_docs: bool
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], int]:
        pair_sizes = np.zeros((len(rows), len(cols)), dtype=np.float64)
        row_sizes = np.zeros(len(rows) if with_docs else 0, dtype=np.float64)
        work = 0
        for i, x in enumerate(rows):
            prefix = x + SEPARATOR
            if self.level == 0 or len(prefix) < self.prefix_copy_min_bytes:
                # short row: a fresh one-shot compression beats copying the 256 KiB deflate state
                for j, y in enumerate(cols):
                    pair_sizes[i, j] = self.compressed_size(prefix + y)
                    work += len(prefix) + len(y)
                if with_docs:
                    row_sizes[i] = self.compressed_size(x)
                    work += len(x)
                continue
            state = zlib.compressobj(self.level, zlib.DEFLATED, _GZIP_WBITS)
            emitted = len(state.compress(x))
            if with_docs:  # C(x) for free: finish a copy of the state right after x
                row_sizes[i] = emitted + len(state.copy().flush())
            emitted += len(state.compress(SEPARATOR))
            work += len(prefix)
            for j, y in enumerate(cols):
                branch = state.copy()
                pair_sizes[i, j] = emitted + len(branch.compress(y)) + len(branch.flush())
                work += len(y)
        col_sizes = np.zeros(len(cols) if with_docs else 0, dtype=np.float64)
        if with_docs:
            for j, y in enumerate(cols):
                col_sizes[j] = self.compressed_size(y)
                work += len(y)
        return row_sizes * 8.0, col_sizes * 8.0, pair_sizes * 8.0, work


class Bz2Scorer(ClassicalScorer):
    """bzip2, block size ``level`` 1-9 (default 9, as ``bzip2 -9``)."""

    name = "bz2"

    def __init__(self, level: int = 9) -> None:
        self.level = _check_int("level", level, LEVELS["bz2"].low, LEVELS["bz2"].high, self.name)

    def settings(self) -> dict[str, Any]:
        import _bz2

        return {"level": self.level, "libbz2": _native_version(_bz2.__file__, "BZ2_bzlibVersion")}

    def compressed_size(self, data: bytes) -> int:
        return len(bz2.compress(data, self.level))


class LzmaScorer(ClassicalScorer):
    """LZMA2 in the xz container with CRC64, ``preset`` 0-9 (``None`` = xz's default, 6)."""

    name = "lzma"

    def __init__(self, preset: int | None = None) -> None:
        self.preset = (
            None
            if preset is None
            else _check_int("preset", preset, LEVELS["lzma"].low, LEVELS["lzma"].high, self.name)
        )

    def settings(self) -> dict[str, Any]:
        import _lzma

        return {
            "preset": 6 if self.preset is None else self.preset,
            "container": "xz",
            "check": "crc64",
            "liblzma": _native_version(_lzma.__file__, "lzma_version_string"),
        }

    def compressed_size(self, data: bytes) -> int:
        return len(lzma.compress(data, format=lzma.FORMAT_XZ, preset=self.preset))


class ZstdScorer(ClassicalScorer):
    """Zstandard frames from the ``zstandard`` package (content size in the header), ``level``
    from -131072 to 22 (default 19)."""

    name = "zstd"

    def __init__(self, level: int = 19) -> None:
        import zstandard

        high = min(LEVELS["zstd"].high, zstandard.MAX_COMPRESSION_LEVEL)
        self.level = _check_int("level", level, LEVELS["zstd"].low, high, self.name)
        self._compressor = zstandard.ZstdCompressor(level=self.level)

    def settings(self) -> dict[str, Any]:
        import zstandard

        return {
            "level": self.level,
            "zstandard": zstandard.__version__,
            "libzstd": ".".join(str(part) for part in zstandard.ZSTD_VERSION),
        }

    def compressed_size(self, data: bytes) -> int:
        return len(self._compressor.compress(data))


__all__ = [
    "LEVELS",
    "SEPARATOR",
    "Bz2Scorer",
    "ClassicalScorer",
    "GzipScorer",
    "LevelRange",
    "LzmaScorer",
    "ZstdScorer",
    "encode_texts",
]

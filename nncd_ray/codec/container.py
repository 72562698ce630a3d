"""The ``.nncd`` container: a self-describing, checksummed file around one range-coded stream.

Layout, format version 1 (``varint`` = unsigned LEB128, ``u32`` = 4 bytes little-endian)::

    magic            4 bytes   b"NNCD"
    version          1 byte    1
    total_length     varint    bytes in the whole file, this field and the trailing CRC included
    model_sha        8 bytes   16 hex digits of the weights hash (or of hub id@revision)
    model_label      varint n + n bytes UTF-8   "embedded", a hub id or a directory name
    dtype            varint n + n bytes ASCII   torch dtype of the weights, e.g. "float32"
    environment      varint n + n bytes ASCII   "<device type>|<torch version>|<CPU capability>"
    threads          varint    torch intra-op threads used for every forward pass
    window           varint    most tokens the model attends over (``[b]`` included)
    overlap          varint    tokens kept as context when the window slides
    lanes            varint    independent token lanes coded in lockstep
    original_length  varint    bytes of the original data
    original_crc32   u32       CRC-32 of the original data
    n_tokens         varint    length of the language-model token stream (final ``[e]`` included)
    n_segments       varint
    segments         n_segments × (varint length << 1 | kind [0 text, 1 raw]
                                   [+ varint token count, text only])
    raw_bytes        Σ raw lengths bytes, the raw segments' bytes verbatim, in order
    n_words          varint
    words            n_words × u32, the range coder's compressed words
    container_crc32  u32       CRC-32 of every byte before it

Raw bytes stored verbatim cost exactly what a uniform 256-way model would (8 bits per byte),
without running them through the coder. Every length is validated against the file, so a damaged
file ends in :class:`~nncd_ray.errors.CodecError`, never in a huge allocation or a traceback.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from nncd_ray.errors import CodecError

MAGIC = b"NNCD"
FORMAT_VERSION = 1
KIND_TEXT = 0
KIND_RAW = 1
# a single text field longer than this is certainly damage, not a label
_MAX_STRING_BYTES = 4096


@dataclass(frozen=True, kw_only=True)
class SegmentEntry:
    """One run of the original bytes: ``text`` (coded as LM tokens) or ``raw`` (stored verbatim)."""

    kind: int  # KIND_TEXT or KIND_RAW
    length: int  # bytes of the original data in this run
    n_tokens: int  # LM tokens of a text run; 0 for raw runs


@dataclass(frozen=True, kw_only=True)
class Header:
    """Everything the decoder needs besides the model, the raw bytes and the coded words."""

    model_sha: str  # 16 hex digits
    model_label: str
    dtype: str
    environment: str
    threads: int
    window: int
    overlap: int
    lanes: int
    original_length: int
    original_crc32: int
    n_tokens: int
    segments: tuple[SegmentEntry, ...]

    @property
    def device_type(self) -> str:
        """``cpu`` or ``cuda``: where the probabilities were computed."""
        return self.environment.split("|", 1)[0]


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"varint of a negative number {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(text: str, *, encoding: str = "utf-8") -> bytes:
    raw = text.encode(encoding)[:_MAX_STRING_BYTES]
    return _varint(len(raw)) + raw


def write_container(header: Header, raw_bytes: bytes, words: np.ndarray) -> bytes:
    """Serialise a container; ``words`` is the coder's ``(n_words,) uint32`` array."""
    body = bytearray()
    body += bytes.fromhex(header.model_sha.ljust(16, "0")[:16])
    body += _string(header.model_label)
    body += _string(header.dtype, encoding="ascii")
    body += _string(header.environment, encoding="ascii")
    for value in (
        header.threads,
        header.window,
        header.overlap,
        header.lanes,
        header.original_length,
    ):
        body += _varint(value)
    body += struct.pack("<I", header.original_crc32)
    body += _varint(header.n_tokens)
    body += _varint(len(header.segments))
    for seg in header.segments:
        body += _varint(seg.length << 1 | seg.kind)
        if seg.kind == KIND_TEXT:
            body += _varint(seg.n_tokens)
    body += raw_bytes
    body += _varint(int(words.size))
    body += np.ascontiguousarray(words, dtype="<u4").tobytes()
    # total_length counts itself: iterate until its own varint width is stable
    prefix = MAGIC + bytes([FORMAT_VERSION])
    total = len(prefix) + 1 + len(body) + 4
    while len(prefix) + len(_varint(total)) + len(body) + 4 != total:
        total = len(prefix) + len(_varint(total)) + len(body) + 4
    blob = prefix + _varint(total) + bytes(body)
    return blob + struct.pack("<I", zlib.crc32(blob))


class _Reader:
    """Bounds-checked cursor over the container bytes (the CRC was verified before reading)."""

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data = data
        self.pos = start
        self.end = end

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise CodecError(f"corrupted nncd file: {what} runs past the end of the data")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def varint(self, what: str) -> int:
        value = shift = 0
        while True:
            byte = self.take(1, what)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise CodecError(f"corrupted nncd file: {what} is not a valid integer")

    def string(self, what: str, encoding: str = "utf-8") -> str:
        n = self.varint(what)
        if n > _MAX_STRING_BYTES:
            raise CodecError(f"corrupted nncd file: {what} is {n} bytes long")
        try:
            return self.take(n, what).decode(encoding)
        except UnicodeDecodeError as exc:
            raise CodecError(f"corrupted nncd file: {what} is not {encoding}") from exc


def _check_envelope(blob: bytes) -> int:
    """Magic, version, length and CRC; return the offset of the first field after the length."""
    if len(blob) < len(MAGIC) or blob[: len(MAGIC)] != MAGIC:
        raise CodecError("not an nncd file (no NNCD magic bytes at the start)")
    if len(blob) < len(MAGIC) + 1:
        raise CodecError(f"truncated nncd file: only {len(blob)} bytes")
    version = blob[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise CodecError(
            f"nncd file format version {version} is not supported "
            f"(this nncd_ray reads version {FORMAT_VERSION}); use the nncd_ray that wrote it"
        )
    reader = _Reader(blob, len(MAGIC) + 1, len(blob))
    try:
        total = reader.varint("the file length")
    except CodecError as exc:
        raise CodecError(f"truncated nncd file: only {len(blob)} bytes") from exc
    if len(blob) < total:
        raise CodecError(f"truncated nncd file: {len(blob)} of {total} bytes present")
    if len(blob) > total:
        raise CodecError(
            f"corrupted nncd file: {len(blob) - total} unexpected bytes after the {total}-byte file"
        )
    if total < reader.pos + 4:
        raise CodecError("corrupted nncd file: declared length is too small")
    (stored,) = struct.unpack("<I", blob[-4:])
    if zlib.crc32(blob[:-4]) != stored:
        raise CodecError("corrupted nncd file: container checksum mismatch")
    return reader.pos


def read_container(blob: bytes) -> tuple[Header, bytes, np.ndarray]:
    """Parse and verify a container: ``(header, raw_bytes, words (n_words,) uint32)``."""
    start = _check_envelope(blob)
    reader = _Reader(blob, start, len(blob) - 4)
    model_sha = reader.take(8, "the model hash").hex()
    model_label = reader.string("the model name")
    dtype = reader.string("the dtype", "ascii")
    environment = reader.string("the environment", "ascii")
    threads = reader.varint("threads")
    window = reader.varint("window")
    overlap = reader.varint("overlap")
    lanes = reader.varint("lanes")
    original_length = reader.varint("the original length")
    (original_crc32,) = struct.unpack("<I", reader.take(4, "the original checksum"))
    n_tokens = reader.varint("the token count")
    n_segments = reader.varint("the segment count")
    if n_segments > original_length:
        raise CodecError("corrupted nncd file: more segments than bytes")
    segments: list[SegmentEntry] = []
    for _ in range(n_segments):
        packed = reader.varint("a segment")
        kind, length = packed & 1, packed >> 1
        n_seg_tokens = reader.varint("a segment's token count") if kind == KIND_TEXT else 0
        segments.append(SegmentEntry(kind=kind, length=length, n_tokens=n_seg_tokens))
    if sum(s.length for s in segments) != original_length:
        raise CodecError("corrupted nncd file: segment lengths do not add up to the original")
    if sum(s.n_tokens for s in segments) + 1 != n_tokens:
        raise CodecError("corrupted nncd file: segment token counts do not add up")
    if not (1 <= lanes <= max(1, n_tokens) and 0 < overlap < window and threads >= 1):
        raise CodecError("corrupted nncd file: invalid coding parameters")
    raw = reader.take(sum(s.length for s in segments if s.kind == KIND_RAW), "the raw bytes")
    n_words = reader.varint("the word count")
    words = np.frombuffer(reader.take(4 * n_words, "the coded words"), dtype="<u4")
    if reader.pos != reader.end:
        raise CodecError("corrupted nncd file: unexpected bytes before the checksum")
    header = Header(
        model_sha=model_sha,
        model_label=model_label,
        dtype=dtype,
        environment=environment,
        threads=threads,
        window=window,
        overlap=overlap,
        lanes=lanes,
        original_length=original_length,
        original_crc32=original_crc32,
        n_tokens=n_tokens,
        segments=tuple(segments),
    )
    return header, raw, words.astype(np.uint32)


def crc32(data: bytes) -> int:
    """CRC-32 (zlib polynomial) of ``data`` as an unsigned 32-bit int."""
    return zlib.crc32(data) & 0xFFFFFFFF

"""Lossless compression of byte strings with a causal LM and constriction's range coder.

:class:`LMCodec` turns bytes into a ``.nncd`` container (see :mod:`nncd_ray.codec.container`) and
back. The language-model token stream is the code-length contract's (DESIGN.md §2): ``[b]`` as
context, then ``ids(x) + [e]`` (for input that is not one tokenizer-reproducible UTF-8 run, the
concatenated token ids of its text segments, see :mod:`nncd_ray.codec.segments`). Each token is
coded with ``constriction.stream.model.Categorical(perfect=False)`` over float64 probabilities
``exp(log_softmax(logits) in float32)``, in a ``constriction.stream.queue.RangeEncoder``.

What is guaranteed: compressing the same bytes with the same model, dtype, device, software and
thread count gives the same file, and decoding it there gives the bytes back (checked by CRC-32).
Decoding on another device type (CPU <-> GPU), another GPU model, another CPU instruction set or
another torch build is NOT guaranteed: the float results of the model may differ in the last bits,
which derails the decoder. Such a failure is detected (checksum mismatch) and reported with the
environment the file was written in; nothing is ever silently wrong.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nncd_ray.codec.container import (
    KIND_RAW,
    KIND_TEXT,
    Header,
    SegmentEntry,
    crc32,
    read_container,
    write_container,
)
from nncd_ray.codec.segments import Segment, detokenize, segment_bytes
from nncd_ray.codec.stepper import LaneStepper, pinned_threads
from nncd_ray.errors import CodecError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from nncd_ray.scorers.lm.loading import LoadedModel

    # codes one step: (step index, (lanes, vocab) float32 log-probs) -> (lanes,) tokens to feed
    _StepCoder = Callable[[int, np.ndarray], np.ndarray]

log = logging.getLogger(__name__)

LN2 = float(np.log(2.0))
# default window cap for long-context models (tokens)
DEFAULT_MAX_WINDOW = 4096


@dataclass(frozen=True, kw_only=True)
class CodecConfig:
    """How a file is coded; everything here is recorded in the container."""

    # most positions the model attends over, [b] included; None = the model's context length,
    # at most DEFAULT_MAX_WINDOW (per-step attention and KV memory grow with it)
    window: int | None = None
    # tokens of context kept when the window slides; None = window // 2
    overlap: int | None = None
    # a new lane is opened for every this many tokens of the stream (longer lanes = better ratio)
    lane_tokens: int = 4096
    # upper bound on lanes (the batch of every forward pass)
    max_lanes: int = 16
    # torch intra-op threads of every forward pass (results depend on it; see stepper.py)
    threads: int = 1


@dataclass(frozen=True, kw_only=True)
class CompressionStats:
    """What one compression did; bits are base 2, ``model_bits`` = Σ −log2 p of the coded tokens."""

    original_bytes: int
    container_bytes: int
    payload_bits: int  # 32 × number of range-coder words
    model_bits: float  # Σ −log2 p over the token stream, float32 log-softmax summed in float64
    raw_bytes: int  # bytes stored verbatim (invalid UTF-8 or tokenizer-irreproducible text)
    tokens: int  # language-model tokens coded, final [e] included
    lanes: int
    seconds: float


def _environment(device_type: str) -> str:
    import torch

    return f"{device_type}|{torch.__version__}|{torch.backends.cpu.get_cpu_capability()}"


def _model_sha(fingerprint: dict[str, object]) -> str:
    import hashlib

    sha = fingerprint.get("weights_sha256")
    if isinstance(sha, str) and len(sha) >= 16:
        return sha[:16]
    ident = f"{fingerprint.get('model')}@{fingerprint.get('revision')}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _model_label(fingerprint: dict[str, object]) -> str:
    name = str(fingerprint.get("model", "?"))
    if "weights_sha256" in fingerprint and name != "embedded":
        name = name.rstrip("/").rsplit("/", 1)[-1]  # a local directory: its name is enough
    return name


def lane_bounds(n_tokens: int, lanes: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each lane in the token stream; lengths differ by at most one."""
    return [(i * n_tokens // lanes, (i + 1) * n_tokens // lanes) for i in range(lanes)]


class LMCodec:
    """Compressor/decompressor bound to one loaded model (load it once, code many files)."""

    def __init__(self, loaded: LoadedModel, config: CodecConfig | None = None) -> None:
        self.loaded = loaded
        self.config = config or CodecConfig()
        window = self.config.window or min(loaded.context_tokens, DEFAULT_MAX_WINDOW)
        if not 2 < window <= loaded.context_tokens:
            raise ConfigError(
                f"window {window} must be within 3..{loaded.context_tokens} (the model's context)"
            )
        overlap = self.config.overlap or window // 2
        if not 0 < overlap < window:
            raise ConfigError(f"overlap {overlap} must be within 1..{window - 1}")
        if self.config.threads < 1 or self.config.max_lanes < 1 or self.config.lane_tokens < 1:
            raise ConfigError("threads, max_lanes and lane_tokens must be positive")
        self.window = window
        self.overlap = overlap
        self.model_sha = _model_sha(loaded.fingerprint)
        self.model_label = _model_label(loaded.fingerprint)
        self.dtype = str(loaded.fingerprint.get("dtype", "unknown"))
        self.device = next(loaded.model.parameters()).device

    # ------------------------------------------------------------------ compress
    def compress(self, data: bytes) -> bytes:
        """The ``.nncd`` container of ``data`` (any bytes, empty included)."""
        return self.compress_with_stats(data)[0]

    def compress_with_stats(self, data: bytes) -> tuple[bytes, CompressionStats]:
        """``(container, stats)``; see :class:`CompressionStats`.

        If the model codes ``data`` worse than storing it (random or binary data), the whole input
        is stored as one raw segment instead, so a file grows by at most the container's header
        and one coded word.
        """
        started = time.perf_counter()
        data = bytes(data)
        segments = segment_bytes(data, self.loaded.tokenizer)
        blob, stats = self._encode(data, segments, started)
        if data and len(blob) > len(data):  # storing is cheap to try: one model step
            stored = [Segment(kind=KIND_RAW, data=data)]
            stored_blob, stored_stats = self._encode(data, stored, started)
            if len(stored_blob) < len(blob):
                return stored_blob, stored_stats
        return blob, stats

    def _encode(
        self, data: bytes, segments: list[Segment], started: float
    ) -> tuple[bytes, CompressionStats]:
        import constriction

        stream = [t for seg in segments for t in seg.token_ids] + [self.loaded.eos_id]
        tokens = np.asarray(stream, dtype=np.int64)
        lanes = max(1, min(self.config.max_lanes, -(-tokens.size // self.config.lane_tokens)))
        bounds = lane_bounds(tokens.size, lanes)
        encoder = constriction.stream.queue.RangeEncoder()
        family = constriction.stream.model.Categorical(perfect=False)
        model_nats = 0.0

        def code(step: int, log_probs: np.ndarray) -> np.ndarray:
            nonlocal model_nats
            fed = np.full(lanes, self.loaded.eos_id, dtype=np.int64)  # finished lanes: filler
            active = [i for i, (a, b) in enumerate(bounds) if a + step < b]
            symbols = np.array([tokens[bounds[i][0] + step] for i in active], dtype=np.int32)
            rows = log_probs[active]
            if symbols.size and int(symbols.max()) >= rows.shape[1]:
                raise ConfigError(
                    f"the tokenizer produced token id {int(symbols.max())}, outside the model's "
                    f"{rows.shape[1]}-token output; tokenizer and model do not belong together"
                )
            model_nats -= float(rows[np.arange(len(active)), symbols].astype(np.float64).sum())
            encoder.encode(symbols, family, _probabilities(rows))
            fed[active] = symbols
            return fed

        self._run(lanes, bounds, code)
        words = encoder.get_compressed()
        header = self._header(data, segments, tokens.size, lanes)
        raw = b"".join(seg.data for seg in segments if seg.kind == KIND_RAW)
        blob = write_container(header, raw, words)
        stats = CompressionStats(
            original_bytes=len(data),
            container_bytes=len(blob),
            payload_bits=32 * int(words.size),
            model_bits=model_nats / LN2,
            raw_bytes=len(raw),
            tokens=int(tokens.size),
            lanes=lanes,
            seconds=time.perf_counter() - started,
        )
        return blob, stats

    def _header(self, data: bytes, segments: list[Segment], n_tokens: int, lanes: int) -> Header:
        return Header(
            model_sha=self.model_sha,
            model_label=self.model_label,
            dtype=self.dtype,
            environment=_environment(self.device.type),
            threads=self.config.threads,
            window=self.window,
            overlap=self.overlap,
            lanes=lanes,
            original_length=len(data),
            original_crc32=crc32(data),
            n_tokens=n_tokens,
            segments=tuple(
                SegmentEntry(kind=s.kind, length=len(s.data), n_tokens=len(s.token_ids))
                for s in segments
            ),
        )

    # ------------------------------------------------------------------ decompress
    def decompress(self, blob: bytes) -> bytes:
        """The original bytes of a ``.nncd`` container; :class:`CodecError` if that fails."""
        import constriction

        header, raw, words = read_container(bytes(blob))
        self._check_model(header)
        environment = _environment(self.device.type)
        if header.environment != environment:
            log.warning(
                "file was written in environment %s, decoding in %s: "
                "float results may differ and decoding may fail",
                header.environment,
                environment,
            )
        bounds = lane_bounds(header.n_tokens, header.lanes)
        decoded = np.zeros(header.n_tokens, dtype=np.int64)
        decoder = constriction.stream.queue.RangeDecoder(words)
        family = constriction.stream.model.Categorical(perfect=False)

        def code(step: int, log_probs: np.ndarray) -> np.ndarray:
            fed = np.full(header.lanes, self.loaded.eos_id, dtype=np.int64)
            active = [i for i, (a, b) in enumerate(bounds) if a + step < b]
            symbols = decoder.decode(family, _probabilities(log_probs[active]))
            for lane, symbol in zip(active, symbols, strict=True):
                decoded[bounds[lane][0] + step] = symbol
            fed[active] = symbols
            return fed

        coder = LMCodec(self.loaded, self._config_of(header))
        coder._run(header.lanes, bounds, code)
        return self._assemble(header, raw, decoded)

    def _config_of(self, header: Header) -> CodecConfig:
        if header.window > self.loaded.context_tokens:
            raise CodecError(
                f"the file was coded with a {header.window}-token window, "
                f"but this model attends over only {self.loaded.context_tokens}"
            )
        return CodecConfig(
            window=header.window,
            overlap=header.overlap,
            lane_tokens=self.config.lane_tokens,
            max_lanes=header.lanes,
            threads=header.threads,
        )

    def _check_model(self, header: Header) -> None:
        if header.model_sha != self.model_sha:
            raise CodecError(
                f"file was compressed with model {header.model_label!r} "
                f"(sha {header.model_sha}), not {self.model_label!r} (sha {self.model_sha}); "
                f"pass --model for the model that wrote it"
            )
        if header.dtype != self.dtype:
            raise CodecError(
                f"file was compressed with the model in {header.dtype}, not {self.dtype}; "
                f"decompress with the same --dtype"
            )

    def _diverged(self, header: Header, what: str) -> str:
        here = _environment(self.device.type)
        hint = (
            f" (written in {header.environment}, decoded in {here}: float results differ "
            "between devices/builds; decode where it was written)"
            if header.environment != here
            else ""
        )
        return f"corrupted nncd file or different model numerics: {what}{hint}"

    def _assemble(self, header: Header, raw: bytes, decoded: np.ndarray) -> bytes:
        if int(decoded[-1]) != self.loaded.eos_id:
            raise CodecError(self._diverged(header, "the token stream does not end with EOS"))
        pieces: list[bytes] = []
        token_pos = raw_pos = 0
        for seg in header.segments:
            if seg.kind == KIND_TEXT:
                ids = decoded[token_pos : token_pos + seg.n_tokens].tolist()
                token_pos += seg.n_tokens
                piece = detokenize(self.loaded.tokenizer, ids).encode("utf-8", "surrogatepass")
            else:
                piece = raw[raw_pos : raw_pos + seg.length]
                raw_pos += seg.length
            if len(piece) != seg.length:
                raise CodecError(self._diverged(header, "a segment decoded to the wrong length"))
            pieces.append(piece)
        data = b"".join(pieces)
        if crc32(data) != header.original_crc32:
            raise CodecError(self._diverged(header, "checksum mismatch of the decoded data"))
        return data

    # ------------------------------------------------------------------ shared model loop
    def _run(self, lanes: int, bounds: list[tuple[int, int]], code: _StepCoder) -> None:
        """Drive the stepper; ``code(step, log_probs)`` codes one step and returns the fed tokens.

        Encoder and decoder both come through here, so both run the identical sequence of forward
        passes: same shapes, same cache path, same threads.
        """
        import torch

        steps = max(b - a for a, b in bounds)
        stepper = LaneStepper(
            self.loaded.model,
            lanes=lanes,
            bos_id=self.loaded.bos_id,
            window=self.window,
            overlap=self.overlap,
            device=self.device,
        )
        with pinned_threads(self.config.threads), torch.inference_mode():
            log_probs = stepper.start()
            for step in range(steps):
                fed = code(step, log_probs)
                if step + 1 < steps:
                    log_probs = stepper.advance(fed)


def _probabilities(log_probs: np.ndarray) -> np.ndarray:
    """float32 log-probabilities ``(n, vocab)`` -> float64 probabilities for constriction."""
    probs = np.exp(log_probs.astype(np.float64))
    if not np.all(np.isfinite(probs)):
        raise CodecError("the model produced non-finite probabilities; cannot code with it")
    return probs

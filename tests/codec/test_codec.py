"""Tests of the lossless LM codec (nncd_ray.codec), ``nncd compress`` and ``nncd decompress``."""

from __future__ import annotations

import dataclasses
import io
import itertools
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paths import GUTENBERG

from nncd_ray.codec import CodecConfig, LMCodec, lane_bounds, read_container
from nncd_ray.codec.container import KIND_RAW, KIND_TEXT, Header, SegmentEntry, write_container
from nncd_ray.codec.segments import segment_bytes, utf8_runs
from nncd_ray.errors import CodecError
from nncd_ray.scorers.lm.loading import LoadedModel, load_causal_lm

FALLBACK = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.\n"
)


def sample_text(n_bytes: int, book: str = "pg98.txt") -> bytes:
    """``n_bytes`` of held-out Gutenberg text (from the book's last 5%), or repeated fallback."""
    path = GUTENBERG / book
    data = path.read_bytes() if path.is_file() else FALLBACK.encode() * (n_bytes // 100 + 1)
    start = len(data) * 95 // 100 if len(data) - len(data) * 95 // 100 >= n_bytes else 0
    return data[start : start + n_bytes]


def load(directory: Path) -> LoadedModel:
    import torch

    return load_causal_lm(str(directory), device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    return load(tiny_gpt2_dir)


@pytest.fixture(scope="module")
def codec(gpt2: LoadedModel) -> LMCodec:
    """Default configuration (window = the model's 256 positions, one lane per 4096 tokens)."""
    return LMCodec(gpt2)


@pytest.fixture(scope="module")
def small_codec(gpt2: LoadedModel) -> LMCodec:
    """Tiny windows and lanes, so that short inputs exercise window slides and several lanes."""
    return LMCodec(gpt2, CodecConfig(window=24, overlap=7, lane_tokens=20, max_lanes=3))


# ---------------------------------------------------------------------------------- round trips
@settings(max_examples=25, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=120),
        st.text(max_size=80).map(lambda s: s.encode("utf-8")),
        st.lists(st.one_of(st.binary(max_size=6), st.text(max_size=12).map(str.encode)))
        .map(b"".join)
        .filter(lambda b: len(b) <= 160),
    )
)
def test_round_trip_arbitrary_bytes(small_codec: LMCodec, data: bytes) -> None:
    blob = small_codec.compress(data)
    assert small_codec.decompress(blob) == data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\xff",
        b"abc\xc3",  # truncated 2-byte sequence at the end
        b"\xc0\xafslash",  # overlong encoding
        b"\xed\xa0\x80 lone surrogate",  # UTF-8 of a surrogate code point is invalid
        "caf\u00e9 \u2014 na\u00efve \U0001f600\n".encode() + b"\xe9t\xe9 latin-1 \xff\xfe",
        b"<|endoftext|> special token text <|bos|><|pad|>",
        b"\r\n\t  trailing spaces   \n\n",
    ],
)
def test_round_trip_edge_cases(codec: LMCodec, small_codec: LMCodec, data: bytes) -> None:
    for coder in (codec, small_codec):
        assert coder.decompress(coder.compress(data)) == data


def test_empty_input_codes_only_eos(codec: LMCodec) -> None:
    blob, stats = codec.compress_with_stats(b"")
    header, raw, words = read_container(blob)
    assert (header.original_length, header.n_tokens, header.segments, raw) == (0, 1, (), b"")
    assert stats.tokens == 1 and words.size == 1
    assert codec.decompress(blob) == b""


def test_invalid_utf8_is_stored_raw(codec: LMCodec) -> None:
    data = "The caf\u00e9 is open. ".encode() * 8 + b"\xff\xfe" + b" and then more text." * 8
    blob, stats = codec.compress_with_stats(data)
    header, raw, _ = read_container(blob)
    assert raw == b"\xff\xfe" and stats.raw_bytes == 2
    assert [s.kind for s in header.segments] == [KIND_TEXT, KIND_RAW, KIND_TEXT]
    assert codec.decompress(blob) == data


def test_incompressible_input_is_stored(codec: LMCodec) -> None:
    data = bytes(random.Random(7).randrange(256) for _ in range(600))
    blob, stats = codec.compress_with_stats(data)
    assert stats.raw_bytes == len(data) and stats.tokens == 1
    assert len(blob) <= len(data) + 96
    assert codec.decompress(blob) == data


def test_deterministic_and_thread_count_recorded(gpt2: LoadedModel) -> None:
    data = sample_text(90)  # small: two threads crawl on a busy two-core machine
    two = LMCodec(gpt2, CodecConfig(threads=2, lane_tokens=12, max_lanes=4))
    blob = two.compress(data)
    assert two.compress(data) == blob
    header, _, _ = read_container(blob)
    assert header.threads == 2 and header.lanes == 4
    # a codec configured differently decodes with the file's parameters, not its own
    assert LMCodec(gpt2, CodecConfig(threads=1, max_lanes=1)).decompress(blob) == data


def test_llama_round_trip(tiny_llama_dir: Path) -> None:
    llama = LMCodec(load(tiny_llama_dir), CodecConfig(window=40, overlap=10, lane_tokens=60))
    data = sample_text(800, "pg11.txt") + b"\x80 tail"
    assert llama.decompress(llama.compress(data)) == data


# ---------------------------------------------------------------------------------- segments
class LowercasingTokenizer:
    """A tokenizer that normalises case, so text with capitals does not round-trip."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, text: str, **kwargs: Any) -> Any:
        return self.inner(text.lower(), **kwargs)

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        return str(self.inner.decode(ids, **kwargs))


def test_utf8_runs_concatenate() -> None:
    data = b"ok\xff\xfeok\xc3\xa9\xc3"
    runs = utf8_runs(data)
    assert b"".join(run for _, run in runs) == data
    assert runs == [(True, b"ok"), (False, b"\xff\xfe"), (True, b"ok\xc3\xa9"), (False, b"\xc3")]


def test_irreproducible_lines_fall_back_to_raw(gpt2: LoadedModel) -> None:
    tokenizer = LowercasingTokenizer(gpt2.tokenizer)
    data = b"all lower case line\nA Line With Capitals\nanother lower line\n"
    segments = segment_bytes(data, tokenizer)  # type: ignore[arg-type]
    assert [(s.kind, s.data) for s in segments] == [
        (KIND_TEXT, b"all lower case line\n"),
        (KIND_RAW, b"A Line With Capitals\n"),
        (KIND_TEXT, b"another lower line\n"),
    ]
    lowering = LMCodec(dataclasses.replace(gpt2, tokenizer=tokenizer))  # type: ignore[arg-type]
    assert lowering.decompress(lowering.compress(data)) == data


def test_lane_bounds_cover_the_stream() -> None:
    for n, lanes in [(1, 1), (10, 3), (4097, 16), (5, 5)]:
        bounds = lane_bounds(n, lanes)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        lengths = [b - a for a, b in bounds]
        assert max(lengths) - min(lengths) <= 1


# ---------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("n_bytes", [1024, 4096, 20_000])
def test_payload_close_to_model_bits(codec: LMCodec, n_bytes: int) -> None:
    data = sample_text(n_bytes)
    blob, stats = codec.compress_with_stats(data)
    assert stats.raw_bytes == 0
    assert stats.payload_bits <= 1.005 * stats.model_bits + 64
    assert stats.payload_bits >= 0.99 * stats.model_bits
    header, _, words = read_container(blob)
    assert 32 * words.size == stats.payload_bits and header.n_tokens == stats.tokens
    if n_bytes == 1024:
        assert codec.decompress(blob) == data


def test_model_bits_match_the_code_length_contract(gpt2: LoadedModel, codec: LMCodec) -> None:
    """One lane, inside the context: Σ −log2 p equals C(x) of DESIGN.md §2 from one full forward."""
    import torch

    data = sample_text(300)
    _, stats = codec.compress_with_stats(data)
    ids = gpt2.tokenizer(data.decode(), add_special_tokens=False)["input_ids"]
    stream = [gpt2.bos_id, *ids, gpt2.eos_id]
    assert stats.lanes == 1 and stats.tokens == len(ids) + 1 and len(stream) <= 256
    with torch.inference_mode():
        logits = gpt2.model(input_ids=torch.tensor([stream])).logits[0, :-1].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    nats = -log_probs[torch.arange(len(stream) - 1), torch.tensor(stream[1:])].double().sum()
    contract_bits = float(nats) / np.log(2.0)
    assert stats.model_bits == pytest.approx(contract_bits, rel=1e-4)


@pytest.mark.slow
def test_one_megabyte(codec: LMCodec) -> None:
    data = sample_text(1_000_000, "pg2600.txt")
    assert len(data) == 1_000_000
    blob, stats = codec.compress_with_stats(data)
    assert stats.payload_bits <= 1.005 * stats.model_bits + 64
    assert codec.decompress(blob) == data


# ---------------------------------------------------------------------------------- errors
def test_not_an_nncd_file(codec: LMCodec) -> None:
    for blob in (b"", b"NNC", b"hello world", b"PK\x03\x04zipfile"):
        with pytest.raises(CodecError, match="not an nncd file"):
            codec.decompress(blob)


def test_truncated_file(codec: LMCodec) -> None:
    blob = codec.compress(b"some text to compress, then cut short")
    for cut in (5, 7, 20, len(blob) - 1):
        with pytest.raises(CodecError, match="truncated"):
            codec.decompress(blob[:cut])


def test_corrupted_file(codec: LMCodec) -> None:
    blob = codec.compress(b"some text to compress, then damage")
    for position in (12, len(blob) // 2, len(blob) - 6, len(blob) - 1):
        damaged = bytearray(blob)
        damaged[position] ^= 0x20
        with pytest.raises(CodecError, match="corrupted"):
            codec.decompress(bytes(damaged))
    with pytest.raises(CodecError, match="unexpected bytes"):
        codec.decompress(blob + b"\x00")
    newer = bytearray(blob)
    newer[4] = 9
    with pytest.raises(CodecError, match="version 9"):
        codec.decompress(bytes(newer))


def test_inconsistent_header_with_valid_checksum(codec: LMCodec) -> None:
    header, raw, words = read_container(codec.compress(b"consistent"))
    bad_tokens = dataclasses.replace(header, n_tokens=header.n_tokens + 5)
    with pytest.raises(CodecError, match="token counts"):
        codec.decompress(write_container(bad_tokens, raw, words))
    bad_lengths = dataclasses.replace(
        header, segments=(SegmentEntry(kind=KIND_TEXT, length=3, n_tokens=header.n_tokens - 1),)
    )
    with pytest.raises(CodecError, match="segment lengths"):
        codec.decompress(write_container(bad_lengths, raw, words))


def test_wrong_model(codec: LMCodec, tiny_llama_dir: Path) -> None:
    blob = codec.compress(b"compressed with the GPT-2 model")
    other = LMCodec(load(tiny_llama_dir))
    with pytest.raises(CodecError, match="compressed with model") as info:
        other.decompress(blob)
    assert codec.model_sha in str(info.value) and other.model_sha in str(info.value)


def test_wrong_dtype(gpt2: LoadedModel, codec: LMCodec) -> None:
    blob = codec.compress(b"float32 file")
    bf16 = dataclasses.replace(gpt2, fingerprint={**gpt2.fingerprint, "dtype": "bfloat16"})
    with pytest.raises(CodecError, match="float32, not bfloat16"):
        LMCodec(bf16).decompress(blob)


def test_different_numerics_are_detected(gpt2: LoadedModel, tiny_llama_dir: Path) -> None:
    """Same fingerprint, other weights (what another device's float results amount to)."""
    data = b"Numbers that differ in the last bit derail the decoder; the checksum says so."
    blob = LMCodec(gpt2).compress(data)
    impostor = dataclasses.replace(gpt2, model=load(tiny_llama_dir).model)
    with pytest.raises(CodecError, match="different model numerics"):
        LMCodec(impostor).decompress(blob)


def test_header_fields(codec: LMCodec) -> None:
    blob = codec.compress(b"fields")
    header, _, _ = read_container(blob)
    assert isinstance(header, Header)
    assert header.model_sha == codec.model_sha and header.dtype == "float32"
    assert header.device_type == "cpu" and header.window == 256 and header.overlap == 128


# ---------------------------------------------------------------------------------- CLI
def nncd(*argv: str) -> int:
    from nncd_ray.cli.main import main

    return main(list(argv))


def test_cli_round_trip(tmp_path: Path, tiny_gpt2_dir: Path, capsys: Any) -> None:
    data = sample_text(700) + b"\xff binary tail \x00\x01"
    source, packed, restored = tmp_path / "in.txt", tmp_path / "in.nncd", tmp_path / "out.txt"
    source.write_bytes(data)
    model = str(tiny_gpt2_dir)
    assert nncd("compress", "--model", model, "--stats", str(source), str(packed)) == 0
    assert '"container_bytes"' in capsys.readouterr().err
    assert packed.read_bytes()[:4] == b"NNCD"
    assert nncd("decompress", "--model", model, str(packed), str(restored)) == 0
    assert restored.read_bytes() == data
    # no overwrite without --force; nothing is lost
    assert nncd("decompress", "--model", model, str(packed), str(restored)) == 2
    assert "--force" in capsys.readouterr().err
    assert nncd("decompress", "--model", model, "-f", str(packed), str(restored)) == 0


def test_cli_stdin_stdout(
    tmp_path: Path, tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"from standard input \xfe\n"
    packed = tmp_path / "stdin.nncd"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert nncd("compress", "--model", str(tiny_gpt2_dir), "-", str(packed)) == 0
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    assert nncd("decompress", "--model", str(tiny_gpt2_dir), str(packed), "-") == 0
    assert out.getvalue() == data


def test_cli_errors(tmp_path: Path, tiny_gpt2_dir: Path, tiny_llama_dir: Path, capsys: Any) -> None:
    source, packed = tmp_path / "a.txt", tmp_path / "a.nncd"
    source.write_bytes(b"plain text")
    assert nncd("decompress", "--model", str(tiny_gpt2_dir), str(source), str(tmp_path / "x")) == 2
    assert "not an nncd file" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert nncd("compress", "--model", str(tiny_gpt2_dir), str(source), str(packed)) == 0
    assert nncd("decompress", "--model", str(tiny_llama_dir), str(packed), str(tmp_path / "y")) == 2
    assert "was compressed with model" in capsys.readouterr().err
    assert nncd("compress", "--model", str(tiny_gpt2_dir), str(tmp_path / "missing"), "-") == 2
    assert "does not exist" in capsys.readouterr().err

"""Speed and size of the lossless LM codec (``nncd compress``) on held-out Gutenberg text.

Text: the last 5% of the bytes of each chosen book (``shared/bench/PROTOCOL.md``, Compression;
never trained on), each compressed as its own file. For every codec configuration (``--max-lanes``
values) it reports compress and decompress speed in bytes/s and tokens/s, the container's bits per
byte, Σ −log2 p of the coded tokens (the model's ideal code length) and the range coder's overhead
over it, and, measured on the same text, gzip -9 / bz2 -9 / xz bits per byte for scale. Every
decompression is checked to give the original bytes back.

Model: ``--model`` if given, else the embedded model when it is installed, else a small GPT-2-style
model with random weights built in a temporary directory (its speed is representative, its ratio
is not). The report says which one ran. Run::

    python -m nncd_ray.bench.codec --books pg1342 --max-lanes 16 1 --json OUT.json
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nncd_ray.bench.machine import machine_info, peak_rss_bytes
from nncd_ray.codec import CodecConfig, LMCodec
from nncd_ray.errors import ConfigError, InputError
from nncd_ray.scorers.lm.loading import LoadedModel, embedded_model_dir, load_causal_lm
from nncd_ray.training.books import DEFAULT_DATA

HELD_OUT_FRACTION = 0.05


@dataclass(frozen=True, kw_only=True)
class CodecRun:
    """One codec configuration over all texts; speeds in bytes/s of the original data."""

    max_lanes: int
    lane_tokens: int
    threads: int
    original_bytes: int
    container_bytes: int
    tokens: int
    lanes_per_file: list[int]
    model_bits: float  # Σ −log2 p of the coded tokens
    payload_bits: int  # range-coded words × 32
    overhead_percent: float  # (payload − model bits) / model bits × 100
    overhead_bits_per_token: float
    model_bits_per_byte: float
    container_bits_per_byte: float
    compress_seconds: float
    decompress_seconds: float
    compress_bytes_per_s: float
    decompress_bytes_per_s: float
    compress_tokens_per_s: float
    decompress_tokens_per_s: float


def held_out(book: Path) -> bytes:
    """The last 5% of the bytes of ``book`` (cut at a byte, as the protocol says)."""
    data = book.read_bytes()
    return data[int(len(data) * (1 - HELD_OUT_FRACTION)) :]


def choose_model(model: str | None, workdir: Path) -> tuple[str | None, str]:
    """``(model argument for load_causal_lm, description)``; see the module docstring."""
    if model is not None:
        return model, f"--model {model}"
    if (embedded_model_dir() / "config.json").exists():
        return None, "embedded model"
    from nncd_ray.testing.tiny_models import build_tiny_model, read_text_lines

    books = sorted(DEFAULT_DATA.glob("*.txt"))
    path = build_tiny_model(
        workdir / "gpt2-random",
        arch="gpt2",
        vocab_size=4096,
        n_layer=4,
        n_embd=256,
        n_head=4,
        n_positions=512,
        seed=0,
        tokenizer_texts=read_text_lines(books, 20_000),
    )
    return str(path), "no embedded model: GPT-2-style, 4 layers × 256, random weights (speed only)"


def run_codec(loaded: LoadedModel, texts: list[bytes], config: CodecConfig) -> CodecRun:
    """Compress and decompress every text with one configuration; verify the round trip."""
    codec = LMCodec(loaded, config)
    compress_s = decompress_s = model_bits = 0.0
    container = payload = tokens = 0
    lanes: list[int] = []
    for text in texts:
        start = time.perf_counter()
        blob, stats = codec.compress_with_stats(text)
        compress_s += time.perf_counter() - start
        start = time.perf_counter()
        restored = codec.decompress(blob)
        decompress_s += time.perf_counter() - start
        if restored != text:
            raise InputError("round trip failed: decompressed bytes differ from the original")
        container += len(blob)
        payload += stats.payload_bits
        model_bits += stats.model_bits
        tokens += stats.tokens
        lanes.append(stats.lanes)
    original = sum(len(t) for t in texts)
    return CodecRun(
        max_lanes=config.max_lanes,
        lane_tokens=config.lane_tokens,
        threads=config.threads,
        original_bytes=original,
        container_bytes=container,
        tokens=tokens,
        lanes_per_file=lanes,
        model_bits=model_bits,
        payload_bits=payload,
        overhead_percent=100 * (payload - model_bits) / model_bits,
        overhead_bits_per_token=(payload - model_bits) / tokens,
        model_bits_per_byte=model_bits / original,
        container_bits_per_byte=8 * container / original,
        compress_seconds=compress_s,
        decompress_seconds=decompress_s,
        compress_bytes_per_s=original / compress_s,
        decompress_bytes_per_s=original / decompress_s,
        compress_tokens_per_s=tokens / compress_s,
        decompress_tokens_per_s=tokens / decompress_s,
    )


def classical_bits_per_byte(texts: list[bytes]) -> dict[str, float]:
    """gzip -9, bz2 -9 and xz (default preset) on the same texts, each text on its own."""
    original = sum(len(t) for t in texts)
    sizes = {
        "gzip-9": sum(len(gzip.compress(t, 9, mtime=0)) for t in texts),
        "bz2-9": sum(len(bz2.compress(t, 9)) for t in texts),
        "xz": sum(len(lzma.compress(t)) for t in texts),
    }
    return {name: 8 * size / original for name, size in sizes.items()}


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    gutenberg = Path(args.gutenberg)
    names = [b if b.endswith(".txt") else f"{b}.txt" for b in args.books]
    if args.books == ["all"]:
        books = sorted(gutenberg.glob("*.txt"))
    else:
        books = [gutenberg / name for name in names]
    missing = [str(b) for b in books if not b.is_file()]
    if missing or not books:
        raise InputError(f"Gutenberg books not found: {', '.join(missing) or gutenberg}")
    texts = [held_out(book)[: args.max_bytes] for book in books]
    with tempfile.TemporaryDirectory(prefix="nncd-bench-codec-") as workdir:
        model, description = choose_model(args.model, Path(workdir))
        loaded = load_causal_lm(model, device=torch.device("cpu"), dtype=torch.float32)
        runs = [
            run_codec(
                loaded,
                texts,
                CodecConfig(lane_tokens=args.lane_tokens, max_lanes=lanes, threads=args.threads),
            )
            for lanes in args.max_lanes
        ]
    return {
        "benchmark": "codec",
        "text": f"held-out Gutenberg, last 5% of {', '.join(b.stem for b in books)}"
        + ("" if args.max_bytes is None else f", its first {args.max_bytes} bytes each"),
        "model": description,
        "fingerprint": loaded.fingerprint,
        "parameters": loaded.parameters,
        "context_tokens": loaded.context_tokens,
        "vocab": int(loaded.model.get_output_embeddings().weight.shape[0]),
        "device": "cpu",
        "runs": [asdict(run) for run in runs],
        "classical_bits_per_byte": classical_bits_per_byte(texts),
        "machine": machine_info(),
        "peak_rss_bytes": peak_rss_bytes(),
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"text:  {report['text']} ({report['runs'][0]['original_bytes']:,} bytes)",
        f"model: {report['model']}, {report['parameters']:,} parameters, "
        f"context {report['context_tokens']}, vocab {report['vocab']}",
        "lanes  compress B/s  decompress B/s  tok/s(c)  bits/byte(file)  bits/byte(Σ−log2p)  "
        "overhead %  bits/token",
    ]
    for run in report["runs"]:
        lines.append(
            f"{run['max_lanes']:>5}  {run['compress_bytes_per_s']:>12,.0f}  "
            f"{run['decompress_bytes_per_s']:>14,.0f}  {run['compress_tokens_per_s']:>8,.0f}  "
            f"{run['container_bits_per_byte']:>15.4f}  {run['model_bits_per_byte']:>18.4f}  "
            f"{run['overhead_percent']:>10.4f}  {run['overhead_bits_per_token']:>10.5f}"
        )
    classical = ", ".join(f"{k} {v:.3f}" for k, v in report["classical_bits_per_byte"].items())
    lines.append(f"classical bits/byte on the same text: {classical}")
    lines.append(f"load average: {report['machine']['load_average']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nncd_ray.bench.codec",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=None, help="model (default: embedded, else tiny)")
    parser.add_argument("--gutenberg", default=str(DEFAULT_DATA), help="folder of books")
    parser.add_argument(
        "--books", nargs="+", default=["pg1342"], help="book names (pg1342 …) or 'all'"
    )
    parser.add_argument(
        "--max-lanes", type=int, nargs="+", default=[16], help="one run per value (e.g. 16 1)"
    )
    parser.add_argument("--lane-tokens", type=int, default=CodecConfig.lane_tokens)
    parser.add_argument("--threads", type=int, default=1, help="torch threads while coding")
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=None,
        metavar="N",
        help="code only the first N bytes of each held-out text (a quick run; default: all)",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="write the report here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if any(n < 1 for n in args.max_lanes) or args.lane_tokens < 1 or args.threads < 1:
        raise ConfigError("--max-lanes, --lane-tokens and --threads must be positive")
    if args.max_bytes is not None and args.max_bytes < 1:
        raise ConfigError("--max-bytes must be positive")
    report = benchmark(args)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

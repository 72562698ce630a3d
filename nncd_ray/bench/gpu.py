"""LM scoring speed on one GPU, in one run (``shared/bench/PROTOCOL.md``, Speed and GPU figures).

One command, no network, a few minutes on one H100/H200::

    python -m nncd_ray.bench.gpu --data DATA/agnews/test.csv --gutenberg DATA/gutenberg --out OUT

1. the bf16 peak: the best rate of an 8192³ bf16 matmul (a 2048³ one does not reach a Hopper
   GPU's peak), the denominator of every MFU figure;
2. two models built here with random weights (speed does not depend on the weights), sharing a
   byte-level BPE trained on the first 20,000 Gutenberg lines with vocabulary 50,257 asked:
   the GPT-2-small shape (12 × 768, 12 heads, context 1,024, tanh-GELU as one kernel) and the
   Llama-1.2B shape (16 × 2,048, 32 heads, 8 KV heads, MLP 8,192, context 2,048);
3. for each, on agnews-small: pairs/s and MFU (2 × parameters × model tokens/s over the peak)
   of the prefix-cached scorer and of the naive one (``[b] x [e] y [e]`` per pair, same
   batching), tiles pipelined as a worker runs them, and the largest difference between them;
4. ``nncd matrix`` end to end through Ray, one actor pinned to the GPU, on agnews-medium with the
   GPT-2 shape: wall time, start-up, steady pairs/s, as a share of the scorer's pairs/s;
5. the README main job on the GPU: the embedded model (float32) on agnews-small, its k-NN
   accuracy, and its largest difference from the CPU on a slice of the same tiles.

Writes ``gpu.json`` and ``gpu.md`` (the README's table) to ``--out``. ``--quick --device cpu``
runs the same steps with tiny shapes on a few documents (the smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus

from nncd_ray.bench.machine import machine_info, matmul_rate, peak_rss_bytes
from nncd_ray.bench.scorer_timing import time_scorer
from nncd_ray.data.protocols import load_protocol
from nncd_ray.scorers.lm import LMScorer, devices
from nncd_ray.scorers.lm.plan import PLAN_VERSION
from nncd_ray.testing.tiny_models import build_tiny_model, read_text_lines

# the protocol's two GPU shapes, and tiny stand-ins for --quick
SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-small": {
        "arch": "gpt2",
        "n_layer": 12,
        "n_embd": 768,
        "n_head": 12,
        "n_positions": 1024,
        "activation": "gelu_pytorch_tanh",
    },
    "llama-1.2b": {
        "arch": "llama",
        "n_layer": 16,
        "n_embd": 2048,
        "n_head": 32,
        "n_kv_head": 8,
        "intermediate_size": 8192,
        "n_positions": 2048,
    },
}
QUICK_SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-small": {"arch": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 512},
    "llama-1.2b": {"arch": "llama", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 512},
}
# the embedded model's k-NN on agnews-small on a CPU (README, "Compression vs accuracy")
CPU_EMBEDDED_ACCURACY = {1: 0.490, 3: 0.500, 5: 0.465, 7: 0.445}


@dataclass(frozen=True, kw_only=True)
class GPUBenchConfig:
    """What to run; the defaults are the reported configuration."""

    # AG News test.csv; Gutenberg .txt folder for the tokenizer (default: ../gutenberg beside it)
    data: str
    gutenberg: str | None = None
    # where gpu.json and gpu.md go (and the stores, in a temp dir below it)
    out: str = "runs/bench-gpu"
    device: str = "cuda"
    dtype: str = "bf16"
    # tokens per pass: "auto" (from the GPU's memory) or a number
    token_budget: int | str = "auto"
    vocab_size: int = 50257
    tokenizer_lines: int = 20_000
    # tile edge of the scorer timing and of the end-to-end job
    tile: int = 128
    # query rows of agnews-small timed per path (None: all 200)
    rows: int | None = None
    # end-to-end job: protocol and executor ("ray": one actor pinned to the GPU)
    e2e_protocol: str = "agnews-medium"
    e2e_executor: str = "ray"
    e2e_rows: int | None = None
    # ...or as many query rows (whole tiles) as the scorer's measured speed fills in this many
    # seconds, so that a slow scorer cannot stretch the run past its few minutes
    e2e_seconds: float = 60.0
    # the README main job on the device (embedded model, agnews-small)
    embedded: bool = True
    # query rows of the CPU cross-check of the embedded model
    parity_rows: int = 16
    matmul_n: int = 8192
    # each path's tiles timed this many times, or until this many seconds are spent (at least
    # once); the median run is reported
    repeats: int = 3
    repeat_seconds: float = 10.0
    quick: bool = False
    shapes: Sequence[str] = field(default=("gpt2-small", "llama-1.2b"))


def quick_config(config: GPUBenchConfig) -> GPUBenchConfig:
    """Tiny shapes and a few documents: seconds on a CPU (smoke test of every step)."""
    return replace(
        config,
        vocab_size=512,
        tokenizer_lines=400,
        tile=8,
        rows=4,
        e2e_protocol="agnews-small",
        e2e_rows=4,
        e2e_executor="local",
        parity_rows=2,
        matmul_n=256,
        repeats=1,
        quick=True,
    )


def build_models(config: GPUBenchConfig, directory: Path) -> dict[str, Path]:
    """The benchmark models (one shared tokenizer) in ``directory``."""
    data = Path(config.data).expanduser().resolve()
    books = Path(config.gutenberg) if config.gutenberg else data.parent.parent / "gutenberg"
    lines = read_text_lines(sorted(books.glob("*.txt")), config.tokenizer_lines)
    shapes = QUICK_SHAPES if config.quick else SHAPES
    built: dict[str, Path] = {}
    tokenizer: Path | None = None
    for name in config.shapes:
        built[name] = build_tiny_model(
            directory / name,
            vocab_size=config.vocab_size,
            tokenizer_texts=lines or None,
            tokenizer_dir=tokenizer,
            dtype="bfloat16" if config.dtype == "bf16" else "float32",
            device=config.device,
            **shapes[name],
        )
        tokenizer = built[name]
    return built


def _split(protocol: str, data: str) -> tuple[Corpus, Corpus]:
    """(queries, references) of a rectangular protocol."""
    split = load_protocol(protocol, data)
    if split.refs is None:
        raise ValueError(f"{protocol} is square; the GPU benchmark needs queries × references")
    return split.queries, split.refs


def e2e_row_count(config: GPUBenchConfig, rows: int, cols: int, pairs_per_second: float) -> int:
    """Query rows of the end-to-end job: ``config.e2e_rows`` if set, else all of them or as many
    whole tiles as ``pairs_per_second`` (the scorer's) computes in ``config.e2e_seconds``."""
    if config.e2e_rows is not None:
        return min(config.e2e_rows, rows)
    fits = int(pairs_per_second * config.e2e_seconds / max(cols, 1))
    return min(rows, max(config.tile, fits // config.tile * config.tile))


def end_to_end(
    model: Path, config: GPUBenchConfig, work: Path, scorer_pairs_per_second: float
) -> dict[str, Any]:
    """``compute_matrix`` (what ``nncd matrix`` runs) on ``config.e2e_protocol``."""
    from nncd_ray import MatrixConfig, compute_matrix
    from nncd_ray.scorers import ScorerSpec

    rows, cols = _split(config.e2e_protocol, config.data)
    count = e2e_row_count(config, len(rows), len(cols), scorer_pairs_per_second)
    if count < len(rows):
        rows = rows.subset(range(count))
    summary = compute_matrix(
        MatrixConfig(
            store=str(work / "e2e.zarr"),
            scorer=ScorerSpec(
                name="lm",
                options={
                    "model": str(model),
                    "device": config.device,
                    "dtype": config.dtype,
                    "token_budget": config.token_budget,
                },
            ),
            tile=config.tile,
            actors=1,
            gpus_per_actor=1.0 if config.device == "cuda" else 0.0,
            executor=config.e2e_executor,
            progress=False,
            overwrite=True,
        ),
        rows,
        cols,
    )
    steady = max(summary.wall_seconds - summary.startup_seconds, 1e-9)
    return {
        "protocol": config.e2e_protocol,
        "query_rows": len(rows),
        "executor": config.e2e_executor,
        "pairs": summary.pairs_computed,
        "wall_seconds": summary.wall_seconds,
        "startup_seconds": summary.startup_seconds,
        "pairs_per_second": summary.pairs_per_second,
        "steady_pairs_per_second": summary.pairs_computed / steady,
    }


def embedded_on_device(config: GPUBenchConfig, work: Path) -> dict[str, Any]:
    """The README main job (embedded model, agnews-small) on the device: k-NN accuracy, and the
    largest difference from the CPU on the first ``parity_rows`` queries."""
    from nncd_ray import EvaluationConfig, MatrixConfig, compute_matrix, evaluate_store
    from nncd_ray.scorers import ScorerSpec

    queries, refs = _split("agnews-small", config.data)
    rows = queries if not config.quick else queries.subset(range(config.rows or 4))
    store = str(work / "embedded.zarr")
    started = time.perf_counter()
    summary = compute_matrix(
        MatrixConfig(
            store=store,
            scorer=ScorerSpec(name="lm", options={"device": config.device}),
            tile=config.tile,
            executor="local",
            progress=False,
            overwrite=True,
        ),
        rows,
        refs,
    )
    seconds = time.perf_counter() - started
    report = evaluate_store(EvaluationConfig(store=store, ks=(1, 3, 5, 7)))
    accuracy = {str(m.k): m.accuracy for m in report.results}
    part = list(rows.texts[: config.parity_rows])
    on_device = LMScorer(None, device=config.device).pair_bits(part, list(refs.texts))
    on_cpu = LMScorer(None, device="cpu").pair_bits(part, list(refs.texts))
    return {
        "pairs": summary.pairs_computed,
        "seconds": seconds,
        "accuracy": accuracy,
        "cpu_accuracy": {str(k): v for k, v in CPU_EMBEDDED_ACCURACY.items()},
        "same_accuracy_as_cpu": not config.quick
        and all(abs(accuracy[str(k)] - v) < 1e-9 for k, v in CPU_EMBEDDED_ACCURACY.items()),
        "parity_pairs": int(on_cpu.size),
        "max_abs_difference_vs_cpu_bits": float(np.abs(on_device - on_cpu).max()),
    }


def run(config: GPUBenchConfig) -> dict[str, Any]:
    import torch

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    peak = matmul_rate(n=config.matmul_n, repeats=10, dtype=torch.bfloat16, device=config.device)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "device": config.device,
        "card": torch.cuda.get_device_name() if config.device == "cuda" else "cpu",
        "config": {
            k: v if not isinstance(v, tuple) else list(v) for k, v in asdict(config).items()
        },
        "bf16_peak_flops_per_second": peak.flops_per_s,
        # the batch planner's rules the figures were measured with
        "planner": PLAN_VERSION,
        # the SDPA kernels the scorer's forward passes may use on CUDA (None: torch's choice)
        "attention_kernels": devices.CUDA_ATTENTION_KERNELS,
        "models": {},
    }
    queries, refs = _split("agnews-small", config.data)
    rows, cols = list(queries.texts[: config.rows]), list(refs.texts)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        work = Path(scratch)
        models = build_models(config, work)
        for name, path in models.items():
            cached, cached_bits = time_scorer(path, rows, cols, config, cached=True)
            naive, naive_bits = time_scorer(path, rows, cols, config, cached=False)
            for figures in (cached, naive):
                figures["mfu"] = figures["effective_flops_per_second"] / peak.flops_per_s
            results["models"][name] = {
                "prefix_cached": cached,
                "naive": naive,
                "cached_over_naive": cached["pairs_per_second"] / naive["pairs_per_second"],
                "max_abs_difference_bits": float(np.abs(cached_bits - naive_bits).max()),
            }
            print(
                f"{name}: {cached['pairs_per_second']:.0f} pairs/s cached, "
                f"{naive['pairs_per_second']:.0f} naive",
                file=sys.stderr,
            )
            _save(out, results)
        first = next(iter(models))
        e2e = end_to_end(
            models[first],
            config,
            work,
            results["models"][first]["prefix_cached"]["pairs_per_second"],
        )
        e2e["model"] = first
        e2e["share_of_scorer"] = (
            e2e["steady_pairs_per_second"]
            / results["models"][first]["prefix_cached"]["pairs_per_second"]
        )
        results["end_to_end"] = e2e
        _save(out, results)
        print(f"end to end: {e2e['steady_pairs_per_second']:.0f} pairs/s steady", file=sys.stderr)
        if config.embedded:
            results["embedded"] = embedded_on_device(config, work)
    results["peak_rss_bytes"] = peak_rss_bytes()
    _save(out, results)
    (out / "gpu.md").write_text(markdown(results))
    return results


def _save(out: Path, results: dict[str, Any]) -> None:
    """``gpu.json`` as far as the run got (a run stopped by a time limit keeps its stages)."""
    (out / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")


def markdown(results: dict[str, Any]) -> str:
    """The README's table of these figures."""
    peak = results["bf16_peak_flops_per_second"]
    lines = [
        f"Card: {results['card']}; bf16 peak (8192³ matmul) {peak / 1e12:.0f} TFLOP/s.",
        "",
        "| model | path | pairs/s | effective TFLOP/s | MFU | passes | cached / naive |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, model in results["models"].items():
        for path in ("prefix_cached", "naive"):
            fig = model[path]
            ratio = f"**{model['cached_over_naive']:.2f}×**" if path == "prefix_cached" else ""
            lines.append(
                f"| {name} | {path.replace('_', '-')} | {fig['pairs_per_second']:,.0f} | "
                f"{fig['effective_flops_per_second'] / 1e12:.1f} | {fig['mfu']:.1%} | "
                f"{fig['forward_passes']} | {ratio} |"
            )
    e2e = results["end_to_end"]
    lines += [
        "",
        f"End to end ({e2e['executor']}, one actor, {e2e['model']}, {e2e['protocol']}, "
        f"{e2e['query_rows']:,} query rows, {e2e['pairs']:,} pairs): "
        f"{e2e['wall_seconds']:.1f} s wall, start-up "
        f"{e2e['startup_seconds']:.1f} s, {e2e['steady_pairs_per_second']:,.0f} pairs/s steady "
        f"= {e2e['share_of_scorer']:.0%} of the scorer's.",
    ]
    if "embedded" in results:
        emb = results["embedded"]
        acc = " / ".join(f"{emb['accuracy'][k]:.3f}" for k in ("1", "3", "5", "7"))
        lines.append(
            f"Embedded model (float32) on agnews-small: k-NN {acc} "
            f"({'same as' if emb['same_accuracy_as_cpu'] else 'differs from'} the CPU's), "
            f"largest difference from the CPU {emb['max_abs_difference_vs_cpu_bits']:.1e} bits "
            f"over {emb['parity_pairs']:,} pairs."
        )
    return "\n".join(lines) + "\n"


def bench_parser(prog: str, description: str | None, outputs: str) -> argparse.ArgumentParser:
    """The options the GPU benchmarks share (data, output folder, device, dtype, rows, quick)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="AG News test.csv")
    parser.add_argument("--gutenberg", help="folder of Gutenberg .txt books (the tokenizer)")
    parser.add_argument("--out", default="runs/bench-gpu", help=f"folder for {outputs}")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--rows", type=int, help="agnews-small query rows timed (all 200)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few documents")
    return parser


def bench_config(args: argparse.Namespace, **extra: Any) -> GPUBenchConfig:
    """The configuration of :func:`bench_parser`'s options, plus a benchmark's own ``extra``."""
    return GPUBenchConfig(
        data=args.data,
        gutenberg=args.gutenberg,
        out=args.out,
        device=args.device,
        dtype=args.dtype,
        rows=args.rows,
        **extra,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("python -m nncd_ray.bench.gpu", __doc__, "gpu.json, gpu.md")
    parser.add_argument("--tile", type=int, default=128, help="tile edge (128)")
    parser.add_argument("--e2e-executor", choices=("ray", "local"), default="ray")
    parser.add_argument(
        "--e2e-seconds",
        type=float,
        default=60.0,
        help="end-to-end job: all agnews-medium rows, or as many whole tiles as the scorer's "
        "speed fills in this many seconds (60)",
    )
    parser.add_argument("--no-embedded", action="store_true", help="skip the README main job")
    args = parser.parse_args(argv)
    config = bench_config(
        args,
        tile=args.tile,
        e2e_executor=args.e2e_executor,
        e2e_seconds=args.e2e_seconds,
        embedded=not args.no_embedded,
    )
    if args.quick:
        config = quick_config(config)
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(
                "python -m nncd_ray.bench.gpu: no CUDA GPU here (use --device cpu --quick "
                "for a smoke run)",
                file=sys.stderr,
            )
            return 2
    results = run(config)
    sys.stdout.write(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Scorer speed on a benchmark protocol (``shared/bench/PROTOCOL.md``, Speed), in one run:

- LM: pairs/s of the prefix-cached scorer and of the naive scorer (``[b] x [e] y`` per pair, same
  token-budget batching) and their ratio; effective FLOP/s = 2 × parameters × model tokens/s as a
  fraction of this machine's fp32 dense matmul rate, measured in the same run;
- host planning: seconds to plan one 128-row tile of queries × all references at the GPU
  bf16 token budget (65,536) on each LM path, with its passes and padding (what a GPU worker
  does on its CPU while the device runs the previous tile);
- gzip: the registry's ``GzipScorer`` on the whole matrix against a naive per-pair implementation
  that recompresses x, y and x + b" " + y with ``gzip.compress``.

The LM is built locally (no download): a GPT-2-style model with random weights and a byte-level BPE
tokenizer trained on the Gutenberg books beside the data. Random weights compute exactly what
trained ones do, so speed is representative. Run::

    python -m nncd_ray.bench.scorers --data ../shared/data/agnews/test.csv --json OUT.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from nncd_ray.bench.machine import machine_info, matmul_rate, peak_rss_bytes
from nncd_ray.data.protocols import load_protocol
from nncd_ray.scorers import make_scorer
from nncd_ray.scorers.lm import LMScorer
from nncd_ray.scorers.lm.budget import pass_cost
from nncd_ray.scorers.lm.devices import resolve_device
from nncd_ray.scorers.lm.plan import PassCost
from nncd_ray.scorers.lm.tile import plan_tile
from nncd_ray.testing.tiny_models import build_tiny_model, read_text_lines


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What to benchmark; the defaults are the reported configuration."""

    # AG News test.csv (or its folder)
    data: str
    protocol: str = "agnews-small"
    # folder of Gutenberg .txt books for the tokenizer (default: ../gutenberg beside the data)
    gutenberg: str | None = None
    # query rows timed on each LM path (each against every reference); None = all rows
    lm_rows: int | None = 6
    # rows per round when alternating the cached and naive paths
    rows_per_round: int = 2
    # the locally built GPT-2-style model: wide enough that dense matmuls dominate the time
    n_layer: int = 4
    n_embd: int = 768
    n_head: int = 12
    n_positions: int = 512
    vocab_size: int = 8192
    # GPT-2's tanh GELU as one fused kernel (HF's default "gelu_new" spends ~6x longer in 5 ops)
    activation: str = "gelu_pytorch_tanh"
    # Gutenberg lines the BPE tokenizer is trained on
    tokenizer_lines: int = 20_000
    # padded tokens per forward pass (the scorer's token_budget)
    token_budget: int = 8192
    # reuse an already built model directory instead of building one in a temp dir
    model_dir: str | None = None
    device: str = "cpu"
    # torch intra-op threads for the LM paths and the matmul reference (0 = torch's default). 1 by
    # default: on a small CPU shared with other busy processes, every op of a multi-threaded
    # forward pass waits at a barrier for a descheduled thread, which measures the neighbours
    threads: int = 1
    seed: int = 0
    # dense matmul edge of the peak-rate reference (2 n³ FLOP per product)
    matmul_n: int = 2048
    # gzip: query rows timed (None = all) and the best of how many runs
    gzip_rows: int | None = None
    gzip_repeats: int = 3


# --quick: tiny sizes everywhere, to check that the benchmark runs (the figures mean nothing)
QUICK = {
    "lm_rows": 2,
    "rows_per_round": 1,
    "n_layer": 1,
    "n_embd": 32,
    "n_head": 2,
    "n_positions": 128,
    "vocab_size": 300,
    "tokenizer_lines": 200,
    "token_budget": 1024,
    "matmul_n": 128,
    "gzip_rows": 4,
    "gzip_repeats": 1,
}


def build_bench_model(config: BenchConfig, directory: Path) -> Path:
    """The benchmark's GPT-2-style model in ``directory`` (tokenizer trained on Gutenberg)."""
    data = Path(config.data).expanduser().resolve()
    data_dir = data if data.is_dir() else data.parent  # .../agnews
    books_dir = Path(config.gutenberg) if config.gutenberg else data_dir.parent / "gutenberg"
    lines = read_text_lines(sorted(books_dir.glob("*.txt")), config.tokenizer_lines)
    return build_tiny_model(
        directory,
        arch="gpt2",
        vocab_size=config.vocab_size,
        n_layer=config.n_layer,
        n_embd=config.n_embd,
        n_head=config.n_head,
        n_positions=config.n_positions,
        seed=config.seed,
        tokenizer_texts=lines or None,
        activation=config.activation,
    )


def _lm_scorer(model_dir: Path, config: BenchConfig, *, cached: bool) -> LMScorer:
    scorer = make_scorer(
        "lm",
        model=str(model_dir),
        device=config.device,
        token_budget=config.token_budget,
        prefix_cache=cached,
    )
    if not isinstance(scorer, LMScorer):
        raise TypeError(f"registry returned {type(scorer).__name__} for 'lm'")
    scorer.pair_bits(["warm-up row"], ["warm-up column", "another"])  # first-call allocations
    return scorer


def time_lm_paths(
    model_dir: Path, rows: Sequence[str], cols: Sequence[str], config: BenchConfig
) -> tuple[dict[str, Any], dict[str, Any], np.ndarray, np.ndarray]:
    """Time ``pair_bits`` of the cached and the naive scorer on the same pairs.

    The two paths alternate over chunks of ``rows_per_round`` rows, so that load from other
    processes on a shared machine falls on both alike. Returns (cached figures, naive figures,
    cached (R, C) bits, naive (R, C) bits).
    """
    scorers = {
        name: _lm_scorer(model_dir, config, cached=name == "cached") for name in ("cached", "naive")
    }
    seconds = dict.fromkeys(scorers, 0.0)
    cpu_seconds = dict.fromkeys(scorers, 0.0)
    before = {name: scorer.stats() for name, scorer in scorers.items()}
    bits: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    for first in range(0, len(rows), config.rows_per_round):
        chunk = rows[first : first + config.rows_per_round]
        for name, scorer in scorers.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            bits[name].append(scorer.pair_bits(chunk, cols))
            seconds[name] += time.perf_counter() - start
            cpu_seconds[name] += time.process_time() - cpu_start
    figures: dict[str, dict[str, Any]] = {}
    for name, scorer in scorers.items():
        after = scorer.stats()
        tokens = after["model_tokens"] - before[name]["model_tokens"]
        padded = after["padded_tokens"] - before[name]["padded_tokens"]
        pairs = len(rows) * len(cols)
        figures[name] = {
            "path": "prefix-cached" if name == "cached" else "naive",
            "rows": len(rows),
            "cols": len(cols),
            "pairs": pairs,
            "seconds": seconds[name],
            # CPU time of this process (all its threads): less sensitive to other processes' load
            "cpu_seconds": cpu_seconds[name],
            "pairs_per_s": pairs / seconds[name],
            "pairs_per_cpu_s": pairs / cpu_seconds[name],
            "model_tokens": tokens,
            "padded_tokens": padded,
            "padding_efficiency": tokens / padded if padded else 1.0,
            "tokens_per_s": tokens / seconds[name],
            "forward_passes": after["forward_passes"] - before[name]["forward_passes"],
            "effective_flops_per_s": 2.0 * scorer.parameters * tokens / seconds[name],
            "documents_truncated": after["documents_truncated"],
            "parameters": scorer.parameters,
            "context_tokens": scorer.loaded.context_tokens,
            "max_doc_tokens": scorer.max_doc_tokens,
        }
    return (
        figures["cached"],
        figures["naive"],
        np.concatenate(bits["cached"]),
        np.concatenate(bits["naive"]),
    )


# the planning figure's tile: rows and the token budget (the GPU's bf16 default)
PLAN_ROWS, PLAN_BUDGET = 128, 65536


def time_planning(
    model_dir: Path, rows: Sequence[str], cols: Sequence[str], repeats: int = 3
) -> dict[str, Any]:
    """Best-of-``repeats`` seconds to plan the tile ``rows × cols`` (tokens already encoded)
    on each LM path at :data:`PLAN_BUDGET`, with its passes and padded/real input tokens; and
    the prefix-cached plan of the same tokens under the GPU cost model of each of
    ``bench.gpu``'s model shapes (what the planner does for them on a GPU)."""
    figures: dict[str, Any] = {"rows": len(rows), "cols": len(cols), "budget": PLAN_BUDGET}
    for cached in (True, False):
        scorer = LMScorer(
            str(model_dir), device="cpu", token_budget=PLAN_BUDGET, prefix_cache=cached
        )
        scorer.encode([*rows, *cols])
        seconds, tile = _best_seconds(partial(scorer.prepare, rows, cols), repeats)
        figures["prefix_cached" if cached else "naive"] = {"seconds": seconds, **_plan_stats(tile)}
    ids = scorer.encode([*rows, *cols])
    figures["gpu_cost"] = {
        name: _plan_stats(
            plan_tile(
                ids[: len(rows)],
                ids[len(rows) :],
                bos=1,
                eos=2,
                pad=0,
                path="prefix-cached",
                budget=PLAN_BUDGET,
                want_cols=True,
                prefix_capacity=1 << 40,
                cost=cost,
            )
        )
        for name, cost in gpu_costs().items()
    }
    return figures


def gpu_costs() -> dict[str, PassCost]:
    """The planner's GPU cost model for each of ``bench.gpu``'s shapes in bf16."""
    import torch

    from nncd_ray.bench.gpu import SHAPES
    from nncd_ray.testing.tiny_models import meta_model

    cuda = torch.device("cuda")
    return {name: pass_cost(meta_model(**s, vocab=50257), cuda) for name, s in SHAPES.items()}


def _plan_stats(tile: Any) -> dict[str, int]:
    plans = list(tile.passes) + [p for g in tile.groups for p in g.documents + g.continuations]
    return {
        "passes": len(plans),
        "padded_tokens": sum(p.padded_tokens for p in plans),
        "real_tokens": sum(p.real_tokens for p in plans),
        "prefix_slots": sum(p.batch * p.prefix_width for p in plans),
    }


def naive_gzip(rows: Sequence[str], cols: Sequence[str]) -> np.ndarray:
    """C(xy) bits, recompressing x, y and x + b" " + y with ``gzip.compress`` for every pair (the
    per-pair work of a naive NCD loop; C(x) and C(y) are computed but only C(xy) is returned)."""
    out = np.zeros((len(rows), len(cols)), dtype=np.float64)
    for i, x in enumerate(rows):
        xb = x.encode("utf-8")
        for j, y in enumerate(cols):
            yb = y.encode("utf-8")
            len(gzip.compress(xb, 9))
            len(gzip.compress(yb, 9))
            out[i, j] = 8 * len(gzip.compress(xb + b" " + yb, 9))
    return out


def _best_seconds(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(least wall seconds over ``repeats`` calls, the last result): sub-second timings on a
    shared machine need the minimum, the run least disturbed by other processes."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def time_gzip(rows: Sequence[str], cols: Sequence[str], repeats: int = 3) -> dict[str, Any]:
    """The registry's gzip scorer (``pair_bits``, full ``score_tile``) against the naive loop,
    each the best of ``repeats`` runs."""
    scorer = make_scorer("gzip")
    pair_seconds, pair = _best_seconds(lambda: scorer.pair_bits(rows, cols), repeats)
    tile_seconds, tile = _best_seconds(lambda: scorer.score_tile(rows, cols), repeats)
    naive_seconds, reference = _best_seconds(lambda: naive_gzip(rows, cols), repeats)
    return {
        "pairs": len(rows) * len(cols),
        "repeats": repeats,
        "pair_bits_seconds": pair_seconds,
        "score_tile_seconds": tile_seconds,
        "naive_seconds": naive_seconds,
        "speedup_pair_bits": naive_seconds / pair_seconds,
        "speedup_score_tile": naive_seconds / tile_seconds,
        "identical_lengths": bool(
            np.array_equal(pair, reference) and np.array_equal(tile.pair_bits, reference)
        ),
    }


def run(config: BenchConfig) -> dict[str, Any]:
    """Every figure of the benchmark, as a JSON-able dict."""
    import torch

    wall = time.perf_counter()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    info = machine_info()
    split = load_protocol(config.protocol, config.data)
    if split.refs is None:
        raise ValueError(
            f"protocol {config.protocol} is square; this benchmark needs queries × refs"
        )
    queries, refs = list(split.queries.texts), list(split.refs.texts)
    lm_rows = queries if config.lm_rows is None else queries[: config.lm_rows]
    device = resolve_device(config.device).type
    rate_before = matmul_rate(n=config.matmul_n, device=device)
    with tempfile.TemporaryDirectory(prefix="nncd-bench-") as tmp:
        model_dir = Path(config.model_dir) if config.model_dir else Path(tmp) / "model"
        build_start = time.perf_counter()
        if not config.model_dir:
            build_bench_model(config, model_dir)
        build_seconds = time.perf_counter() - build_start
        cached, naive, cached_bits, naive_bits = time_lm_paths(model_dir, lm_rows, refs, config)
        planning = time_planning(model_dir, queries[:PLAN_ROWS], refs)
    rate_after = matmul_rate(n=config.matmul_n, device=device)
    peak_rate = max(rate_before.flops_per_s, rate_after.flops_per_s)
    gzip_rows = queries if config.gzip_rows is None else queries[: config.gzip_rows]
    classical = time_gzip(gzip_rows, refs, repeats=config.gzip_repeats)
    return {
        "benchmark": "nncd_ray.bench.scorers",
        "protocol": config.protocol,
        "matrix": [len(queries), len(refs)],
        "config": asdict(config),
        "machine": info,
        "matmul": {"before": asdict(rate_before), "after": asdict(rate_after)},
        "model_build_seconds": build_seconds,
        "lm": {
            "timed_rows": len(lm_rows),
            "cached": cached,
            "naive": naive,
            "speedup_pairs_per_s": cached["pairs_per_s"] / naive["pairs_per_s"],
            "speedup_pairs_per_cpu_s": cached["pairs_per_cpu_s"] / naive["pairs_per_cpu_s"],
            "max_abs_diff_bits": float(np.max(np.abs(cached_bits - naive_bits))),
            "flop_fraction_cached": cached["effective_flops_per_s"] / peak_rate,
            "flop_fraction_naive": naive["effective_flops_per_s"] / peak_rate,
            "matmul_flops_per_s": peak_rate,
        },
        "planning": planning,
        "gzip": classical,
        "wall_seconds": time.perf_counter() - wall,
        "peak_rss_bytes": peak_rss_bytes(),
        "load_average_end": machine_info()["load_average"],
    }


def format_table(result: dict[str, Any]) -> str:
    """A readable summary of :func:`run`'s result."""
    lm, gz = result["lm"], result["gzip"]
    cached, naive = lm["cached"], lm["naive"]
    gflops = lm["matmul_flops_per_s"] / 1e9
    rows = [
        f"protocol {result['protocol']} ({result['matrix'][0]} x {result['matrix'][1]}); "
        f"machine: {result['machine']['cpu']}, {result['machine']['torch_threads']} torch threads, "
        f"load average {result['machine']['load_average']}",
        f"LM: GPT-2 style, {cached['parameters'] / 1e6:.1f}M parameters, context "
        f"{cached['context_tokens']}, token budget {result['config']['token_budget']}; "
        f"timed on the first {lm['timed_rows']} query rows x all {cached['cols']} references",
        "",
        f"{'LM path':<16}{'pairs':>8}{'seconds':>10}{'pairs/s':>10}{'tokens/s':>11}"
        f"{'pad eff':>9}{'GFLOP/s':>10}{'of peak':>9}",
    ]
    for name, fig, fraction in (
        ("prefix-cached", cached, lm["flop_fraction_cached"]),
        ("naive", naive, lm["flop_fraction_naive"]),
    ):
        rows.append(
            f"{name:<16}{fig['pairs']:>8}{fig['seconds']:>10.2f}{fig['pairs_per_s']:>10.1f}"
            f"{fig['tokens_per_s']:>11.0f}{fig['padding_efficiency']:>9.2f}"
            f"{fig['effective_flops_per_s'] / 1e9:>10.1f}{fraction:>9.1%}"
        )
    plan = result["planning"]
    rows.append(
        f"host planning of one {plan['rows']} x {plan['cols']} tile at budget {plan['budget']}: "
        + "; ".join(
            f"{name} {plan[key]['seconds']:.3f} s, {plan[key]['passes']} passes, padding "
            f"{plan[key]['padded_tokens'] / max(plan[key]['real_tokens'], 1) - 1:.1%}"
            for name, key in (("cached", "prefix_cached"), ("naive", "naive"))
        )
    )
    cpu_plan = plan["prefix_cached"]
    rows.append(
        "the same cached tile planned with the GPU cost model (bf16, vocabulary 50,257): "
        + "; ".join(
            f"{name} {fig['passes']} passes, padding "
            f"{fig['padded_tokens'] / max(fig['real_tokens'], 1) - 1:.1%}, "
            f"{fig['prefix_slots']:,} prefix slots"
            for name, fig in plan["gpu_cost"].items()
        )
        + f" (CPU weights: {cpu_plan['prefix_slots']:,} prefix slots)"
    )
    rows += [
        f"cached / naive pairs/s: {lm['speedup_pairs_per_s']:.2f}x (target >= 1.7x); by CPU "
        f"time {lm['speedup_pairs_per_cpu_s']:.2f}x; "
        f"max |cached - naive| = {lm['max_abs_diff_bits']:.2e} bits",
        f"fp32 dense matmul peak ({result['matmul']['before']['n']}^3, best of "
        f"{result['matmul']['before']['repeats']}, before/after): "
        f"{result['matmul']['before']['flops_per_s'] / 1e9:.1f} / "
        f"{result['matmul']['after']['flops_per_s'] / 1e9:.1f} GFLOP/s; "
        f"cached effective = {lm['flop_fraction_cached']:.1%} of {gflops:.1f} (target >= 50%)",
        "",
        f"gzip -9 on {gz['pairs']} pairs (best of {gz['repeats']}): "
        f"pair_bits {gz['pair_bits_seconds']:.3f} s, "
        f"score_tile (rows+cols+pairs) {gz['score_tile_seconds']:.3f} s, naive per-pair "
        f"x,y,x+y {gz['naive_seconds']:.3f} s",
        f"gzip speedup: {gz['speedup_pair_bits']:.2f}x (pair_bits), "
        f"{gz['speedup_score_tile']:.2f}x (score_tile) (target >= 2x); identical lengths: "
        f"{gz['identical_lengths']}",
        "",
        f"wall {result['wall_seconds']:.1f} s, "
        f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB, "
        f"load average at end {result['load_average_end']}",
    ]
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> tuple[BenchConfig, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m nncd_ray.bench.scorers", description=__doc__.splitlines()[0]
    )
    defaults = BenchConfig(data="")
    parser.add_argument("--data", required=True, help="AG News test.csv (or its folder)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--protocol", default=defaults.protocol)
    parser.add_argument("--gutenberg", default=None, help="folder of .txt books for the tokenizer")
    parser.add_argument(
        "--lm-rows", type=int, default=defaults.lm_rows, help="query rows timed (0 = all)"
    )
    parser.add_argument("--rows-per-round", type=int, default=defaults.rows_per_round)
    parser.add_argument("--n-layer", type=int, default=defaults.n_layer)
    parser.add_argument("--n-embd", type=int, default=defaults.n_embd)
    parser.add_argument("--n-head", type=int, default=defaults.n_head)
    parser.add_argument("--n-positions", type=int, default=defaults.n_positions)
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    parser.add_argument("--token-budget", type=int, default=defaults.token_budget)
    parser.add_argument("--model-dir", default=None, help="reuse a saved model instead of building")
    parser.add_argument("--device", default=defaults.device, choices=("cpu", "cuda", "auto"))
    parser.add_argument(
        "--threads", type=int, default=defaults.threads, help="torch threads (0 = torch default)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes throughout (a one-layer model, 2 rows, small matmuls): checks that the "
        "benchmark runs; its figures mean nothing",
    )
    args = parser.parse_args(argv)
    config = BenchConfig(
        data=args.data,
        protocol=args.protocol,
        gutenberg=args.gutenberg,
        lm_rows=args.lm_rows or None,
        rows_per_round=args.rows_per_round,
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        n_positions=args.n_positions,
        vocab_size=args.vocab_size,
        token_budget=args.token_budget,
        model_dir=args.model_dir,
        device=args.device,
        threads=args.threads,
    )
    if args.quick:
        config = replace(config, **QUICK)  # type: ignore[arg-type]
    return config, args.json


def main(argv: Sequence[str] | None = None) -> int:
    config, json_path = parse_args(argv)
    result = run(config)
    print(format_table(result))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"figures written to {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

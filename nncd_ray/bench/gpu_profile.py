"""Where a GPU's time goes in the LM scorer: device time by kernel family, and token budgets.

Complements ``python -m nncd_ray.bench.gpu`` (steady pairs/s, after an untimed first tile) with
(each path timed once here, after its untimed first tile), for the GPT-2-small shape of
PROTOCOL.md on agnews-small:

1. for each token budget: pairs/s of the prefix-cached and naive paths as ``bench.gpu`` times
   them, and the *device* seconds of the same tiles planned beforehand (the steady state of a
   worker, whose host plans tile k + 1 while the device runs tile k);
2. a ``torch.profiler`` trace of both paths at the default budget, its device time summed by
   kernel family (matmul, attention, softmax and cross-entropy, gathers and copies, the rest);
3. pairs/s and passes of both paths at the default budget for several values of the planner's
   estimated fixed cost of a pass (``budget.GPU_PASS_SECONDS``, default 8 ms), to calibrate it,
   and with the shape-blind weights every GPU plan used before the cost model;
4. one layer's prefix gather of a GPT-2-small-shape continuation pass in both store layouts:
   head-major with an element-wise gather (the store of 3d26b8b, measured on the H200) and
   slot-major copied as 8-byte words (the store now);
5. the output layer's matmul (32,768 scored positions) at the vocabulary's own width of 50,257
   and padded to a multiple of 128 columns, as the scorer pads it on a GPU;
6. at the default budget, the same as 1. with every pass's attention in masked SDPA
   (``fast_attention`` off: prefixes gathered per item), then also with torch's own choice of
   SDPA kernels (cuDNN's included) beside the kernels the scorer allows.

    python -m nncd_ray.bench.gpu_profile --data DATA/agnews/test.csv --gutenberg DATA/gutenberg

Writes ``gpu_profile.json`` to ``--out``; ``--quick --device cpu`` is the smoke test.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import patch

from nncd_ray.bench.gpu import (
    GPUBenchConfig,
    _split,
    bench_config,
    bench_parser,
    build_models,
    quick_config,
)
from nncd_ray.bench.machine import milliseconds, synchronize
from nncd_ray.bench.scorer_timing import time_scorer, timed_scorer
from nncd_ray.scorers.lm import LMScorer

# kernel families, first match wins (CUDA kernel names, or CPU op names on a CPU)
FAMILIES: tuple[tuple[str, str], ...] = (
    ("attention", r"fmha|flash|attention|sdpa|cutlass.*mem_eff|cudnn.*(mha|attn)"),
    ("matmul", r"gemm|cublas|cutlass|sm90_xmma|nvjet|matmul|\bmm\b|addmm|linear"),
    ("softmax / cross-entropy", r"softmax|logsumexp|nll|cross_entropy|reduce"),
    ("gather / copy", r"gather|index|copy|cat|scatter|memcpy|memset|fill"),
)


def family(name: str) -> str:
    """The kernel family of a kernel (or op) name."""
    lowered = name.lower()
    for label, pattern in FAMILIES:
        if re.search(pattern, lowered):
            return label
    return "other (layer norm, activations, adds)"


def device_seconds(scorer: LMScorer, rows: Sequence[str], cols: Sequence[str], tile: int) -> float:
    """Seconds to run every tile of ``rows × cols``, planned before the clock starts."""
    prepared = [
        scorer.prepare(rows[r : r + tile], cols[c : c + tile])
        for r in range(0, len(rows), tile)
        for c in range(0, len(cols), tile)
    ]
    synchronize(scorer.device.type)
    start = time.perf_counter()
    pending = [scorer.launch(p) for p in prepared]
    for done in pending:
        done.result()
    return time.perf_counter() - start


def profile(
    scorer: LMScorer, rows: Sequence[str], cols: Sequence[str], tile: int
) -> dict[str, Any]:
    """Device time (or CPU time on a CPU) of one run over the tiles, by kernel family."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = scorer.device.type == "cuda"
    prepared = [scorer.prepare(rows[:tile], cols[:tile])]
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with torch_profile(activities=activities) as trace:
        for p in prepared:
            scorer.launch(p).result()
    families: dict[str, float] = {}
    kernels: list[tuple[str, float]] = []
    for event in trace.key_averages():
        seconds = (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1e6
        if seconds <= 0 or (cuda and event.device_type.name != "CUDA"):
            continue
        families[family(event.key)] = families.get(family(event.key), 0.0) + seconds
        kernels.append((event.key[:120], seconds))
    total = sum(families.values()) or 1.0
    kernels.sort(key=lambda k: -k[1])
    return {
        "seconds": total,
        "families": {k: {"seconds": v, "share": v / total} for k, v in families.items()},
        "top_kernels": [{"name": n, "seconds": s} for n, s in kernels[:15]],
    }


# one continuation pass of the GPT-2-small shape at budget 65,536 on agnews-small: about 1,450
# rows of 45 tokens after prefixes padded to 55, from a store of 128 rows
GATHER_SHAPE = {
    "rows": 1450,
    "store_rows": 128,
    "heads": 12,
    "head_dim": 64,
    "width": 55,
    "new": 45,
}


# the output layer of a pass: scored positions × hidden, by hidden × vocabulary (GPT-2's 50,257
# and the Llama-1.2B shape's hidden width, whose bench vocabulary is GPT-2's too)
HEAD_SHAPES = ((768, 50257), (2048, 50257))


def head_matmul(device: str, dtype: str, rows: int = 32768, repeats: int = 20) -> list[Any]:
    """Milliseconds of the head's float32-output matmul (the scorer's on this device) at the
    vocabulary's own width and padded to ``HEAD_COLUMN_MULTIPLE``, then with the cross-entropy."""
    import torch
    import torch.nn.functional as F

    from nncd_ray.scorers.lm.head import HEAD_COLUMN_MULTIPLE, half_output_float_supported

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    half_float = half_output_float_supported(torch.device(device), torch_dtype)
    targets = torch.zeros(rows, dtype=torch.long, device=device)
    figures = []
    for hidden, vocab in HEAD_SHAPES:
        h = torch.randn(rows, hidden, device=device).to(torch_dtype)
        padded = -(-vocab // HEAD_COLUMN_MULTIPLE) * HEAD_COLUMN_MULTIPLE
        for columns in (vocab, padded):
            w = torch.randn(columns, hidden, device=device).to(torch_dtype)

            def logits(h: torch.Tensor = h, w: torch.Tensor = w) -> torch.Tensor:
                if half_float:
                    return torch.mm(h, w.t(), out_dtype=torch.float32)
                return F.linear(h.float(), w.float())

            def with_loss(h: torch.Tensor = h, w: torch.Tensor = w) -> torch.Tensor:
                return F.cross_entropy(logits(h, w), targets, reduction="none")

            row: dict[str, Any] = {"hidden": hidden, "vocab": vocab, "columns": columns}
            row["matmul_ms"] = milliseconds(logits, device, repeats)
            row["with_cross_entropy_ms"] = milliseconds(with_loss, device, repeats)
            row["matmul_tflops"] = 2 * rows * hidden * columns / row["matmul_ms"] / 1e9
            figures.append(row)
    return figures


def gather_layouts(device: str, dtype: str, repeats: int = 20) -> dict[str, Any]:
    """Milliseconds per layer (keys and values) of the prefix gather in both store layouts."""
    import torch

    from nncd_ray.scorers.lm.attention import PrefixLayer

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    shape = GATHER_SHAPE
    rows, heads, dim = shape["rows"], shape["heads"], shape["head_dim"]
    width, new, slots = shape["width"], shape["new"], shape["width"] + 20
    stores = [
        torch.randn(shape["store_rows"], slots + new, heads, dim, device=device).to(torch_dtype)
        for _ in range(2)
    ]
    heads_first = [store.transpose(1, 2).contiguous() for store in stores]
    pick = torch.randint(0, shape["store_rows"], (rows,), device=device)
    own = torch.randn(rows, new, heads, dim, device=device).to(torch_dtype).transpose(1, 2)

    def head_major() -> None:
        for store in heads_first:
            gathered = store[:, :, slots - width : slots + new].index_select(0, pick)
            gathered[:, :, width:] = own

    def slot_major() -> None:
        PrefixLayer(*stores, rows=pick, slots=slots, width=width).update(own, own)

    return {
        **shape,
        "dtype": dtype,
        "head_major_ms": milliseconds(head_major, device, repeats),
        "slot_major_ms": milliseconds(slot_major, device, repeats),
    }


# the planner's setting that ignores the model's shape (the CPU's weights, which every GPU plan
# used before the cost model), timed beside the pass-cost values
SHAPE_BLIND = "shape-blind"


@contextmanager
def pass_seconds(value: float | str) -> Iterator[None]:
    """The planner's estimated fixed cost of a pass set to ``value`` seconds, or
    :data:`SHAPE_BLIND` for the CPU's shape-blind weights (scorers built meanwhile plan so)."""
    from nncd_ray.scorers.lm import budget as lm_budget
    from nncd_ray.scorers.lm.plan import DEFAULT_COST

    saved, saved_cost = lm_budget.GPU_PASS_SECONDS, lm_budget.pass_cost
    if value == SHAPE_BLIND:
        lm_budget.pass_cost = lambda model, device: DEFAULT_COST
    else:
        lm_budget.GPU_PASS_SECONDS = float(value)
    try:
        yield
    finally:
        lm_budget.GPU_PASS_SECONDS, lm_budget.pass_cost = saved, saved_cost


def both_paths(
    model: Path, rows: Sequence[str], cols: Sequence[str], config: GPUBenchConfig
) -> dict[str, Any]:
    """Both paths over ``rows × cols``: pairs/s as ``bench.gpu`` times them (a fresh scorer, its
    tiles planned while the device runs the one before), then, by the same scorer, the
    device-only pairs/s of the same tiles planned beforehand, run again (shapes it has seen)."""
    per_path: dict[str, Any] = {}
    for cached in (True, False):
        scorer = timed_scorer(model, config, cached=cached)
        timed, _ = time_scorer(model, rows, cols, config, cached=cached, scorer=scorer)
        seconds = device_seconds(scorer, rows, cols, config.tile)
        timed["device_seconds"] = seconds
        timed["device_pairs_per_second"] = len(rows) * len(cols) / seconds
        per_path["prefix_cached" if cached else "naive"] = timed
    for prefix, key in (("", "pairs_per_second"), ("device_", "device_pairs_per_second")):
        per_path[f"{prefix}cached_over_naive"] = (
            per_path["prefix_cached"][key] / per_path["naive"][key]
        )
    return per_path


@contextmanager
def attention_kernels(kernels: tuple[str, ...] | None) -> Iterator[None]:
    """The SDPA kernels the scorer allows on CUDA set to ``kernels`` (None: torch's choice,
    cuDNN attention included)."""
    from nncd_ray.scorers.lm import devices

    with patch.object(devices, "CUDA_ATTENTION_KERNELS", kernels):
        yield


@contextmanager
def masked_attention() -> Iterator[None]:
    """Scorers built inside give every pass SDPA with a mask (``fast_attention`` off)."""
    from nncd_ray.scorers.lm import fast_attention

    with patch.object(fast_attention, "IN_PLACE_DEVICES", ()):
        yield


def run(
    config: GPUBenchConfig, budgets: Sequence[int], overheads: Sequence[float | str] = ()
) -> dict[str, Any]:
    from nncd_ray.scorers.lm import devices

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    queries, refs = _split("agnews-small", config.data)
    rows, cols = list(queries.texts[: config.rows]), list(refs.texts)
    if config.quick:  # a smoke run: a few pairs of each kind
        cols = cols[:16]
    results: dict[str, Any] = {
        "device": config.device,
        "attention_kernels": devices.CUDA_ATTENTION_KERNELS,
        "budgets": {},
        "masked_attention": {},
        "torch_attention_choice": {},
        "pass_seconds": {},
        "profile": {},
    }

    def save(label: str, per_path: dict[str, Any]) -> None:
        print(f"{label}: {json.dumps(_brief(per_path))}", file=sys.stderr)
        (out / "gpu_profile.json").write_text(json.dumps(results, indent=2) + "\n")

    results["gather"] = gather_layouts(
        config.device, config.dtype, repeats=3 if config.quick else 20
    )
    print(f"prefix gather: {json.dumps(results['gather'])}", file=sys.stderr)
    results["head"] = head_matmul(
        config.device,
        config.dtype,
        rows=1024 if config.quick else 32768,
        repeats=2 if config.quick else 20,
    )
    print(f"head: {json.dumps(results['head'])}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-profile-") as scratch:
        model = build_models(replace(config, shapes=("gpt2-small",)), Path(scratch))["gpt2-small"]
        for budget in budgets:
            per_path = both_paths(model, rows, cols, replace(config, token_budget=budget))
            results["budgets"][str(budget)] = per_path
            save(f"budget {budget}", per_path)
        # the same at the default budget with torch's own choice of attention kernels (cuDNN's
        # included), after the runs above, which never built a cuDNN plan
        if config.device == "cuda":  # the same with every pass masked (fast_attention off)
            with masked_attention():
                results["masked_attention"] = both_paths(model, rows, cols, config)
            save("masked attention", results["masked_attention"])
        if devices.CUDA_ATTENTION_KERNELS is not None and config.device == "cuda":
            with attention_kernels(None), masked_attention():
                results["torch_attention_choice"] = both_paths(model, rows, cols, config)
            save("torch's attention kernels", results["torch_attention_choice"])
        for value in overheads:
            with pass_seconds(value):
                results["pass_seconds"][str(value)] = both_paths(model, rows, cols, config)
            save(f"pass seconds {value}", results["pass_seconds"][str(value)])
        for cached in (True, False):
            scorer = LMScorer(
                str(model), device=config.device, dtype=config.dtype, prefix_cache=cached
            )
            scorer.score_tile(rows[:2], cols[:4])
            results["profile"]["prefix_cached" if cached else "naive"] = profile(
                scorer, rows, cols, config.tile
            )
    (out / "gpu_profile.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _brief(per_path: dict[str, Any]) -> dict[str, Any]:
    brief: dict[str, Any] = {}
    for path in ("prefix_cached", "naive"):
        fig = per_path[path]
        brief[path] = {
            "pairs/s": round(fig["pairs_per_second"]),
            "passes": fig["forward_passes"],
            "padded tokens": fig["padded_tokens"],
        }
        if "device_pairs_per_second" in fig:  # the budget sweep times device-only runs too
            brief[path]["device pairs/s"] = round(fig["device_pairs_per_second"])
    return brief


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| token budget | cached pairs/s | naive pairs/s | cached / naive | "
        "device-only: cached | naive | cached / naive |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for budget, fig in results["budgets"].items():
        cached, naive = fig["prefix_cached"], fig["naive"]
        lines.append(
            f"| {int(budget):,} | {cached['pairs_per_second']:,.0f} | "
            f"{naive['pairs_per_second']:,.0f} | {fig['cached_over_naive']:.2f}× | "
            f"{cached['device_pairs_per_second']:,.0f} | {naive['device_pairs_per_second']:,.0f} "
            f"| {fig['device_cached_over_naive']:.2f}× |"
        )
    lines += [
        "",
        "| path | device s (one tile) | " + " | ".join(f for f, _ in FAMILIES) + " | other |",
    ]
    lines.append("|---|---:|" + "---:|" * (len(FAMILIES) + 1))
    for path, prof in results["profile"].items():
        shares = [prof["families"].get(f, {"share": 0.0})["share"] for f, _ in FAMILIES]
        other = 1.0 - sum(shares)
        lines.append(
            f"| {path} | {prof['seconds']:.3f} | "
            + " | ".join(f"{s:.0%}" for s in shares)
            + f" | {other:.0%} |"
        )
    # the default budget's run, the same with torch's attention kernels, the pass-cost values
    sweep: list[tuple[str, str, dict[str, Any]]] = []
    if results.get("masked_attention"):
        sweep.append(("masked SDPA only (allowed)", "default", results["masked_attention"]))
    if results.get("torch_attention_choice"):
        sweep.append(("masked SDPA, torch's choice", "default", results["torch_attention_choice"]))
    for value, fig in results.get("pass_seconds", {}).items():
        label = value if value == SHAPE_BLIND else f"{float(value) * 1e3:g} ms"
        sweep.append(("allowed", label, fig))
    if sweep:
        budget = str(sweep[0][2]["prefix_cached"]["token_budget"])
        if budget in results["budgets"]:
            sweep.insert(0, ("flash varlen + allowed", "default", results["budgets"][budget]))
        lines += [
            "",
            "attention kernels allowed: " + ", ".join(results.get("attention_kernels") or ["all"]),
            "",
            "| attention kernels | planner's pass cost | cached pairs/s | passes | naive pairs/s | "
            "passes | cached / naive | device-only: cached | naive | cached / naive |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kernels, label, fig in sweep:
            cached, naive = fig["prefix_cached"], fig["naive"]
            lines.append(
                f"| {kernels} | {label} | {cached['pairs_per_second']:,.0f} | "
                f"{cached['forward_passes']} | {naive['pairs_per_second']:,.0f} | "
                f"{naive['forward_passes']} | {fig['cached_over_naive']:.2f}× | "
                f"{cached['device_pairs_per_second']:,.0f} | "
                f"{naive['device_pairs_per_second']:,.0f} | "
                f"{fig['device_cached_over_naive']:.2f}× |"
            )
    if "gather" in results:
        gather = results["gather"]
        lines += [
            "",
            f"prefix gather of one layer ({gather['rows']} rows × {gather['width']} + "
            f"{gather['new']} slots, {gather['dtype']}): head-major {gather['head_major_ms']:.3f} "
            f"ms, slot-major words {gather['slot_major_ms']:.3f} ms",
        ]
    if results.get("head"):
        lines += [
            "",
            "| head: hidden × vocabulary | columns | matmul ms | TFLOP/s | with cross-entropy ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in results["head"]:
            lines.append(
                f"| {row['hidden']} × {row['vocab']:,} | {row['columns']:,} | "
                f"{row['matmul_ms']:.2f} | {row['matmul_tflops']:.1f} | "
                f"{row['with_cross_entropy_ms']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("python -m nncd_ray.bench.gpu_profile", __doc__, "gpu_profile.json")
    parser.add_argument(
        "--budgets",
        default="65536,131072,262144",
        help="token budgets to time, comma-separated (65536,131072,262144)",
    )
    parser.add_argument(
        "--pass-seconds",
        default=f"0.002,0.032,{SHAPE_BLIND}",
        help="the planner's fixed cost of a pass to try at the default budget, in seconds, "
        f"or {SHAPE_BLIND} (the CPU's weights), comma-separated "
        f"(0.002,0.032,{SHAPE_BLIND}); empty to skip",
    )
    args = parser.parse_args(argv)
    config = bench_config(args, repeats=1)
    if args.quick:
        config = quick_config(config)
        if args.rows is not None:
            config = replace(config, rows=args.rows)
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    overheads: list[float | str] = [
        v.strip() if v.strip() == SHAPE_BLIND else float(v)
        for v in args.pass_seconds.split(",")
        if v.strip()
    ]
    results = run(config, budgets, overheads)
    sys.stdout.write(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The batch plans of ``bench.gpu``'s tiles on a GPU, computed on any machine: forward passes and
tokens through the model, padded (masked attention) against packed (``fast_attention``).

The planner is host-side numpy, so what a GPU run plans is known without one: the same models
(built locally by ``bench.gpu.build_models``, the same tokenizer), agnews-small in tiles of 128,
the bf16 token budget of 65,536, the GPU's cost model (``budget.pass_cost`` for CUDA, from the
model's shape) and the prefix capacity of a GPU with ``--device-memory-gib`` of memory. For each
shape and path it reports the passes, the real tokens, and the tokens the passes run through
the model: padded, ``batch × width``; packed, the real ones. No model runs a forward pass here
beyond the scorer's load-time self-check; the figures are counts, not speed.

    python -m nncd_ray.bench.gpu_plans --data ../shared/data/agnews/test.csv [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import patch

from nncd_ray.bench.gpu import GPUBenchConfig, _split, build_models, quick_config
from nncd_ray.scorers.lm import LMScorer

# what torch reports as an H100 80GB's total memory, GiB (its prefix capacity: budget module)
H100_MEMORY_GIB = 79.1


def plan_counts(
    scorer: LMScorer,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    tile: int,
    packed: bool,
    device_memory: int,
) -> dict[str, Any]:
    """Passes and tokens of ``rows × cols`` in tiles of ``tile`` as ``scorer`` would plan them
    on a GPU with ``device_memory`` bytes (its cost model and prefix capacity there), packed or
    padded."""
    import torch

    from nncd_ray.scorers.lm.budget import pass_cost, prefix_capacity

    cuda = torch.device("cuda")  # a device name: nothing runs there
    cost = pass_cost(scorer.model, cuda)
    capacity = prefix_capacity(scorer.model, cuda, device_memory=device_memory)
    runner = scorer._masked
    if runner is None:
        raise ValueError("this model has no batched path to plan")
    passes = real = run = 0
    with (
        patch.object(scorer, "_pass_cost", replace(cost, packed=packed)),
        patch.object(scorer, "_prefix_capacity", capacity),
        patch.object(runner, "fast", packed),  # the scorer plans packed for a fast runner
    ):
        for i in range(0, len(rows), tile):
            for j in range(0, len(cols), tile):
                prepared = scorer.prepare(list(rows[i : i + tile]), list(cols[j : j + tile]))
                plans = list(prepared.passes)
                plans += [p for g in prepared.groups for p in g.documents + g.continuations]
                passes += len(plans)
                real += sum(p.real_tokens for p in plans)
                run += sum(p.real_tokens if packed else p.padded_tokens for p in plans)
    return {
        "forward_passes": passes,
        "model_tokens": real,
        "tokens_run": run,
        "padding": run / real - 1.0,
    }


def run(config: GPUBenchConfig, *, budget: int, memory_gib: float) -> dict[str, Any]:
    queries, refs = _split("agnews-small", config.data)
    rows, cols = list(queries.texts[: config.rows]), list(refs.texts)
    device_memory = int(memory_gib * (1 << 30))
    results: dict[str, Any] = {
        "protocol": "agnews-small",
        "tile": config.tile,
        "token_budget": budget,
        "device_memory_gib": memory_gib,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-gpu-plans-") as scratch:
        for name, path in build_models(config, Path(scratch)).items():
            per_path: dict[str, Any] = {}
            for cached in (True, False):
                scorer = LMScorer(
                    str(path), device="cpu", dtype=config.dtype, token_budget=budget,
                    prefix_cache=cached,
                )  # fmt: skip
                per_path[scorer.path] = {
                    layout: plan_counts(
                        scorer,
                        rows,
                        cols,
                        tile=config.tile,
                        packed=packed,
                        device_memory=device_memory,
                    )
                    for layout, packed in (("padded", False), ("packed", True))
                }
            results["models"][name] = per_path
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| shape | path | passes padded | packed | tokens run padded | packed | padding |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, paths in results["models"].items():
        for path, layouts in paths.items():
            padded, packed = layouts["padded"], layouts["packed"]
            lines.append(
                f"| {name} | {path} | {padded['forward_passes']} | {packed['forward_passes']} | "
                f"{padded['tokens_run']:,} | {packed['tokens_run']:,} | "
                f"{padded['padding']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nncd_ray.bench.gpu_plans",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="AG News test.csv")
    parser.add_argument("--gutenberg", help="folder of Gutenberg .txt books (the tokenizer)")
    parser.add_argument("--out", default="runs/bench-gpu", help="folder for gpu-plans.json")
    parser.add_argument("--budget", type=int, default=65536, help="token budget (65536)")
    parser.add_argument(
        "--device-memory-gib", type=float, default=H100_MEMORY_GIB, help="the GPU's memory"
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few documents")
    args = parser.parse_args(argv)
    config = GPUBenchConfig(data=args.data, gutenberg=args.gutenberg, out=args.out, device="cpu")
    if args.quick:
        config = quick_config(config)
    results = run(config, budget=args.budget, memory_gib=args.device_memory_gib)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-plans.json").write_text(json.dumps(results, indent=2) + "\n")
    sys.stdout.write(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

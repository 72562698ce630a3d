"""Training speed of ``nncd train``: uncompiled against ``--compile``, in one run.

Both runs train the shipped recipe's model shape on the same Gutenberg books, with the same
seed and thread count, for ``--steps`` optimizer steps each (into temporary folders, so nothing is
kept); seconds per step are taken from the training log between step ``--skip`` and the last step,
so data preparation and ``torch.compile``'s first-call compilation are left out and reported
separately. The report gives both rates, their ratio, tokens per second, the effective FLOP/s
(6 × parameters × tokens/s: forward and backward) as a fraction of this machine's dense bf16
matmul rate measured in the same run (``shared/bench/PROTOCOL.md``, Speed), and the loss of the
last logged step of each run (they differ only by kernel rounding). Run::

    python -m nncd_ray.bench.train_speed --steps 80 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from nncd_ray.bench.machine import machine_info, matmul_rate
from nncd_ray.errors import ConfigError, NNCDError
from nncd_ray.training.books import DEFAULT_DATA
from nncd_ray.training.config import TrainConfig
from nncd_ray.training.documents import DocumentMix
from nncd_ray.training.loop import train_language_model


def _timed_run(config: TrainConfig, skip: int) -> dict[str, Any]:
    started = time.perf_counter()
    result = train_language_model(config)
    wall = time.perf_counter() - started
    log = [json.loads(line) for line in (result.out_dir / "train_log.jsonl").open()]
    at = {record["step"]: record for record in log}
    first, last = at[skip], at[config.steps]
    per_step = (last["elapsed_s"] - first["elapsed_s"]) / (config.steps - skip)
    tokens_per_step = config.batch_size * config.shape.context_tokens
    return {
        "compile": config.compile,
        "seconds_per_step": per_step,
        "tokens_per_second": tokens_per_step / per_step,
        "seconds_to_step": {str(skip): first["elapsed_s"]},
        "wall_seconds": wall,
        "parameters": result.parameters,
        "last_loss_nats": last["loss_nats"],
    }


def recipe_config(data_dir: Path, steps: int, skip: int, threads: int) -> TrainConfig:
    """The shipped recipe's work per step (seeded circuit, locked after a short early phase, noise
    spans) for ``steps`` steps; its learning rates do not change the speed."""
    return TrainConfig(
        data_dir=data_dir,
        out_dir=Path("unused"),
        steps=steps,
        warmup_steps=min(30, steps - 1),
        threads=threads,
        copy_circuit=True,
        early_steps=min(10, skip),
        ramp_steps=min(5, steps - min(10, skip)),
        lock_circuit=True,
        mix=DocumentMix(noise_prob=0.3),
        log_every=1,
        progress=False,
    )


def measure(base: TrainConfig, skip: int) -> dict[str, Any]:
    """``base`` trained uncompiled and compiled (into temporary folders), steps after ``skip``
    timed; the report of the module docstring."""
    import torch

    if not 1 <= skip < base.steps:
        raise ConfigError(f"--skip must be in [1, --steps), got {skip} with {base.steps}")
    with tempfile.TemporaryDirectory(prefix="nncd-train-speed-") as scratch:
        runs = [
            _timed_run(replace(base, out_dir=Path(scratch) / "eager", compile=False), skip),
            _timed_run(replace(base, out_dir=Path(scratch) / "compiled", compile=True), skip),
        ]
    rate = matmul_rate(dtype=torch.bfloat16)  # with the runs' thread count, still set
    for entry in runs:
        flops = 6 * entry["parameters"] * entry["tokens_per_second"]
        entry["effective_flops_per_s"] = flops
        entry["fraction_of_matmul_rate"] = flops / rate.flops_per_s
    return {
        "steps": base.steps,
        "timed_from_step": skip,
        "threads": base.threads,
        "tokens_per_step": base.batch_size * base.shape.context_tokens,
        "runs": runs,
        "speedup": runs[0]["seconds_per_step"] / runs[1]["seconds_per_step"],
        "matmul": asdict(rate),
        "machine": machine_info(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nncd_ray.bench.train_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="folder of books (*.txt)")
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per run (80)")
    parser.add_argument(
        "--skip", type=int, default=20, help="steps left out of the timing (compilation; 20)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = parser.parse_args(argv)
    try:
        base = recipe_config(Path(args.data_dir), args.steps, args.skip, args.threads)
        report = measure(base, args.skip)
    except NNCDError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

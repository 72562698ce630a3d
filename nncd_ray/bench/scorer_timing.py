"""Steady pairs/s of one scoring path over a set of tiles, timed as a worker runs them (shared by
``bench.gpu`` and ``bench.gpu_profile``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nncd_ray.bench.machine import synchronize
from nncd_ray.scorers.lm import LMScorer


class TimingConfig(Protocol):
    """What the timing reads of a benchmark's configuration (``bench.gpu.GPUBenchConfig``)."""

    @property
    def device(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def token_budget(self) -> int | str: ...
    @property
    def tile(self) -> int: ...
    @property
    def repeats(self) -> int: ...
    @property
    def repeat_seconds(self) -> float: ...


def timed_scorer(
    model: Path | None, config: TimingConfig, *, cached: bool, dtype: str | None = None
) -> LMScorer:
    """The scorer a timing runs: ``model`` (None: the embedded one) on the configuration's
    device, dtype (unless ``dtype``) and token budget, prefix-cached or naive."""
    return LMScorer(
        None if model is None else str(model),
        device=config.device,
        dtype=dtype or config.dtype,
        token_budget=config.token_budget,
        prefix_cache=cached,
    )


def time_scorer(
    model: Path | None,
    rows: Sequence[str],
    cols: Sequence[str],
    config: TimingConfig,
    *,
    cached: bool,
    dtype: str | None = None,
    scorer: LMScorer | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Steady pairs/s of one path over ``rows × cols`` in tiles of ``config.tile``, pipelined as
    a worker runs them (tile k + 1 planned and queued while tile k runs), by ``scorer`` (else a
    fresh one). The first whole tile runs once untimed (kernels, the allocator's blocks, pinned
    buffers: what a worker has after its first tile; its seconds are ``warmup_seconds``); then
    all tiles are timed ``config.repeats`` times or until ``config.repeat_seconds`` are spent
    (at least once), each from untokenized documents, and the median run is reported. Returns
    the figures and the (rows, cols) C(xy) in bits."""
    if scorer is None:
        scorer = timed_scorer(model, config, cached=cached, dtype=dtype)
    synchronize(config.device)
    start = time.perf_counter()
    scorer.score_tile(list(rows[: config.tile]), list(cols[: config.tile]))
    synchronize(config.device)
    warmup = time.perf_counter() - start
    runs: list[tuple[float, dict[str, int], np.ndarray]] = []
    while not runs or (
        len(runs) < config.repeats and sum(r[0] for r in runs) < config.repeat_seconds
    ):
        scorer.forget_documents()
        runs.append(_timed_run(scorer, rows, cols, config))
    seconds, counted, pair = sorted(runs, key=lambda run: run[0])[(len(runs) - 1) // 2]
    return {
        "path": scorer.path,
        "token_budget": scorer.token_budget,
        "parameters": scorer.parameters,
        "pairs": pair.size,
        "seconds": seconds,
        "pairs_per_second": pair.size / seconds,
        "runs_pairs_per_second": [pair.size / run[0] for run in runs],
        "warmup_seconds": warmup,
        "model_tokens": counted["model_tokens"],
        "tokens_per_second": counted["model_tokens"] / seconds,
        "effective_flops_per_second": 2.0 * scorer.parameters * counted["model_tokens"] / seconds,
        "forward_passes": counted["forward_passes"],
        # passes in fast_attention's variable-length flash kernels (prefixes read in place)
        "fast_passes": counted["fast_passes"],
        "padded_tokens": counted["padded_tokens"],
        "oom_backoffs": scorer.counters.oom_backoffs,
    }, pair


def _timed_run(
    scorer: LMScorer, rows: Sequence[str], cols: Sequence[str], config: TimingConfig
) -> tuple[float, dict[str, int], np.ndarray]:
    """One pipelined pass over all tiles: seconds, counter deltas, the (rows, cols) bits."""
    tiles = [
        (r, c) for r in range(0, len(rows), config.tile) for c in range(0, len(cols), config.tile)
    ]
    pair = np.zeros((len(rows), len(cols)))
    before = asdict(scorer.counters)
    synchronize(config.device)
    start = time.perf_counter()
    pending: list[tuple[int, int, Any]] = []
    for r, c in tiles:
        prepared = scorer.prepare(rows[r : r + config.tile], cols[c : c + config.tile])
        pending.append((r, c, scorer.launch(prepared)))
        if len(pending) > 1:
            r0, c0, done = pending.pop(0)
            block = done.result().pair_bits
            pair[r0 : r0 + block.shape[0], c0 : c0 + block.shape[1]] = block
    for r0, c0, done in pending:
        block = done.result().pair_bits
        pair[r0 : r0 + block.shape[0], c0 : c0 + block.shape[1]] = block
    synchronize(config.device)
    seconds = time.perf_counter() - start
    after = asdict(scorer.counters)
    counted = {
        key: after[key] - before[key]
        for key in ("model_tokens", "forward_passes", "fast_passes", "padded_tokens")
    }
    return seconds, counted, pair


__all__ = ["time_scorer", "timed_scorer"]

"""Training the embedded language model: data split, tokenizer, model config and training loop.

The model that ships in ``nncd_ray/embedded/model/`` is made by :func:`train_language_model` from
the Gutenberg books in ``../shared/data/gutenberg``. Every book is split by bytes: the first 95%
(cut moved back to a UTF-8 character boundary, so the held-out part is never smaller than 5%) is
the only text the tokenizer and the model ever see; the rest is the held-out test text that
:mod:`nncd_ray.training.bits_per_byte` scores. Nothing from AG News is used for training or tuning.

A run is a pure function of its :class:`TrainConfig`: the schedule counts steps (never time), the
data order comes from a seeded ``numpy`` generator, the weights from ``torch.manual_seed``, and the
data preparation runs on one thread. Two runs with the same config and thread count give identical
weights.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from nncd_ray.errors import ConfigError
from nncd_ray.training.checkpoints import jsonable, load_checkpoint, save_checkpoint
from nncd_ray.training.compilation import (
    compiler_available,
    deterministic_algorithms,
    loss_function,
)
from nncd_ray.training.config import TrainConfig, TrainResult
from nncd_ray.training.documents import IGNORE_INDEX, split_window
from nncd_ray.training.dropout import add_residual_dropout, check_dropout
from nncd_ray.training.model import build_model, save_model
from nncd_ray.training.schedule import build_optimizer, decay_start_step, set_learning_rate
from nncd_ray.training.sequences import prepare_data, training_windows
from nncd_ray.training.tokenizer import token_byte_lengths


def train_language_model(config: TrainConfig) -> TrainResult:
    """Train, then save model (safetensors), tokenizer, ``training.json`` into ``config.out_dir``.

    Writes one JSON line per ``log_every`` steps to ``out_dir/train_log.jsonl``: step, lr,
    loss (nats/token), bpb (bits per UTF-8 byte of the batch's targets), tokens seen, seconds.
    """
    import torch

    from nncd_ray.training.copy_circuit import CircuitLock, seed_copy_circuit  # imports torch

    if config.steps < 1 or config.batch_size < 1:
        raise ConfigError("steps and batch_size must be positive")
    check_dropout(config.dropout)  # before the data is read, not when the model is built
    if config.max_books is not None and config.max_books < 1:
        raise ConfigError(f"max_books must be at least 1, not {config.max_books}")
    if config.embedding_lr_scale < 0 or config.early_embedding_lr_scale < 0:
        raise ConfigError("embedding_lr_scale and early_embedding_lr_scale must be zero or more")
    if config.lock_circuit and not config.copy_circuit:
        raise ConfigError("lock_circuit needs copy_circuit")
    if config.early_steps < 0 or config.ramp_steps < 1:
        raise ConfigError("early_steps must be zero or more and ramp_steps positive")
    decay_start = decay_start_step(config)
    if config.early_steps and config.early_steps + config.ramp_steps > decay_start:
        raise ConfigError(
            f"early_steps + ramp_steps = {config.early_steps + config.ramp_steps} runs into the "
            f"decay, which starts at step {decay_start}"
        )
    if config.compile and not compiler_available():
        raise ConfigError("--compile needs a C++ compiler (g++, c++ or clang++, or $CXX) on PATH")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    books, tokenizer, stream = prepare_data(config)
    byte_len = torch.from_numpy(token_byte_lengths(tokenizer))
    torch.manual_seed(config.seed)
    # compiled, plain attention fuses into fewer kernels than SDPA's flash path (the attention
    # implementation is not saved with the model: it loads with the loader's choice)
    model = build_model(config.shape, tokenizer, attention="eager" if config.compile else "sdpa")
    if config.copy_circuit:
        seed_copy_circuit(model)
    add_residual_dropout(model, config.dropout)
    model.train()
    optimizer = build_optimizer(model, config)
    context = config.shape.context_tokens
    bos = int(tokenizer.bos_token_id)
    checkpoint = out / "checkpoint.pt"
    first_step, elapsed_before = 0, 0.0
    if config.resume:
        first_step, elapsed_before = load_checkpoint(checkpoint, model, optimizer, config)
    started -= elapsed_before
    windows = training_windows(config, tokenizer, books, stream)
    for _ in range(first_step * config.batch_size):  # the windows the checkpoint already saw
        next(windows)
    batch_loss = loss_function(model, config)
    log_path = out / "train_log.jsonl"
    _truncate_log(log_path, first_step)
    bar = _progress(config, first_step)
    loss_value = float("nan")
    lock = None
    with deterministic_algorithms(config.compile), log_path.open("a") as log:
        for step in range(first_step, config.steps):
            if config.lock_circuit and lock is None and step >= config.early_steps:
                lock = CircuitLock(model)  # a resumed run re-reads the same, restored values
            lr = set_learning_rate(optimizer, step, config)
            window = np.stack([next(windows) for _ in range(config.batch_size)])
            tokens_np, targets_np = split_window(window)
            tokens, targets = torch.from_numpy(tokens_np), torch.from_numpy(targets_np)
            inputs = torch.cat([torch.full((len(tokens), 1), bos), tokens[:, :-1]], dim=1)
            loss = batch_loss(inputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if lock is not None:
                lock.restore()
            loss_value = loss.item()
            scored = targets[targets != IGNORE_INDEX]
            batch_bytes = int(byte_len[scored].sum())
            bpb = loss_value * scored.numel() / math.log(2) / max(1, batch_bytes)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", bpb=f"{bpb:.3f}")
            done = step + 1
            elapsed = time.perf_counter() - started
            if done % config.log_every == 0 or done == config.steps:
                record = {
                    "step": done,
                    "lr": lr,
                    "loss_nats": round(loss_value, 5),
                    "bpb": round(bpb, 5),
                    "tokens_seen": done * targets.numel(),
                    "elapsed_s": round(elapsed, 2),
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                save_checkpoint(checkpoint, model, optimizer, config, done, elapsed)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    save_model(model, tokenizer, out, config.storage_dtype)
    meta = {
        "config": jsonable(asdict(config)),
        "books": [{"name": b.name, "bytes": b.total_bytes, "cut_byte": b.cut_byte} for b in books],
        "train_tokens": len(stream),
        "train_bytes": sum(len(b.train.encode()) for b in books),
        "parameters": parameters,
        "wall_seconds": round(wall, 1),
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return TrainResult(
        out_dir=out,
        parameters=parameters,
        train_tokens=len(stream),
        tokens_seen=config.steps * config.batch_size * context,
        wall_seconds=wall,
        final_loss_nats=loss_value,
    )


def _progress(config: TrainConfig, first_step: int) -> Any:
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=first_step, desc="train", unit="step")


def _truncate_log(path: Path, keep_steps: int) -> None:
    """Keep the log lines of steps <= ``keep_steps`` (all gone when starting afresh)."""
    kept = []
    if keep_steps and path.exists():
        kept = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= keep_steps]
    path.write_text("".join(ln + "\n" for ln in kept))

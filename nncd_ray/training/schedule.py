"""Learning rates by step (never by time): warmup, an optional early phase for a seeded copy
circuit, a stable part and a linear decay; the embedding's own multiple; the AdamW groups."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from nncd_ray.training.config import TrainConfig


def _phase(step: int, config: TrainConfig) -> float:
    """How far ``step`` is from the early phase (0) to the main one (1)."""
    if config.early_steps <= 0:
        return 1.0
    if step < config.early_steps:
        return 0.0
    return min(1.0, (step - config.early_steps + 1) / config.ramp_steps)


def decay_start_step(config: TrainConfig) -> int:
    """The first step of the linear decay (the last ``decay_fraction`` of the steps)."""
    return config.steps - max(1, round(config.steps * config.decay_fraction))


def learning_rate(step: int, config: TrainConfig) -> float:
    """Warmup-stable-decay: linear warmup, constant ``peak_lr``, linear decay over the last
    ``decay_fraction`` of the steps to ``peak_lr * min_lr_ratio``. With ``early_steps`` the
    warmup and the stable part start at ``early_lr`` and ramp to ``peak_lr`` after the early phase.

    Before the decay starts the rate does not depend on ``steps``, so a run checkpointed there can
    be resumed with a different ``steps`` and still equal a fresh run with that ``steps``.
    """
    phase = _phase(step, config)
    stable = config.peak_lr  # exactly, once (or where) there is no early phase
    if phase < 1.0:
        stable = config.early_lr + (config.peak_lr - config.early_lr) * phase
    if step < config.warmup_steps:
        return stable * (step + 1) / config.warmup_steps
    decay_start = decay_start_step(config)
    if step < decay_start:
        return stable
    progress = (step - decay_start + 1) / (config.steps - decay_start)
    return config.peak_lr * (1.0 - (1.0 - config.min_lr_ratio) * progress)


def embedding_lr_scale(step: int, config: TrainConfig) -> float:
    """The embedding's multiple of :func:`learning_rate` at ``step``."""
    early, late = config.early_embedding_lr_scale, config.embedding_lr_scale
    return early + (late - early) * _phase(step, config)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on 2-D weights except the embedding, which has its own learning rate
    (:func:`embedding_lr_scale` x the schedule's rate, set by ``_set_learning_rate``)."""
    import torch

    named = list(model.named_parameters())
    embed = [p for n, p in named if "embed" in n]
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in named if p.ndim < 2 and "embed" not in n]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "embedding": False},
        {"params": other, "weight_decay": 0.0, "embedding": False},
        {"params": embed, "weight_decay": 0.0, "embedding": True},
    ]
    return torch.optim.AdamW(groups, lr=config.peak_lr, betas=(0.9, 0.95), eps=1e-8)


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, config: TrainConfig) -> float:
    lr = learning_rate(step, config)
    embedding_scale = embedding_lr_scale(step, config)
    for group in optimizer.param_groups:
        group["lr"] = lr * (embedding_scale if group["embedding"] else 1.0)
    return lr

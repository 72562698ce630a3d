"""Checkpoints of a training run: a resumed run equals an uninterrupted one, and one made with
another recipe is refused."""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nncd_ray.errors import ConfigError
from nncd_ray.training.config import TrainConfig
from nncd_ray.training.schedule import learning_rate

if TYPE_CHECKING:
    import torch


# fields that may differ between a checkpointed run and the run that resumes it
_RESUMABLE_CHANGES = frozenset(
    {"out_dir", "steps", "log_every", "checkpoint_every", "progress", "resume", "storage_dtype"}
)


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    step: int,
    elapsed: float,
) -> None:
    """Model and optimizer state after ``step`` steps (written to a temporary file, renamed)."""
    import torch

    state = {
        "step": step,
        "elapsed_s": elapsed,
        "config": jsonable(asdict(config)),
        "learning_rates": [learning_rate(s, config) for s in range(step)],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),  # dropout's masks continue where they were
    }
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig
) -> tuple[int, float]:
    """Restore a checkpoint into ``model``/``optimizer``; (steps done, seconds spent).

    Refuses one made with another recipe, or whose steps so far would have had other learning
    rates under ``config`` (a resumed run must equal a fresh run with the same config).
    """
    import torch

    if not path.exists():
        raise ConfigError(f"nothing to resume: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)
    mine = jsonable(asdict(config))
    theirs = state["config"]
    # a setting added after the checkpoint was written counts as its default then
    defaults = {
        f.name: jsonable(f.default) for f in fields(TrainConfig) if f.default is not MISSING
    }
    changed = sorted(
        k for k in mine if mine[k] != theirs.get(k, defaults.get(k)) and k not in _RESUMABLE_CHANGES
    )
    if changed:
        raise ConfigError(f"checkpoint {path} was made with other settings: {', '.join(changed)}")
    step = int(state["step"])
    if (
        step > config.steps
        or [learning_rate(s, config) for s in range(step)] != state["learning_rates"]
    ):
        raise ConfigError(
            f"checkpoint {path} is at step {step}, past the point where --steps "
            f"{config.steps} changes the schedule; start afresh"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    return step, float(state["elapsed_s"])


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value

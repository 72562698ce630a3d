"""The training step's loss, optionally through ``torch.compile``, and the settings that keep a
compiled run deterministic."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from nncd_ray.training.documents import IGNORE_INDEX

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

    from nncd_ray.training.config import TrainConfig


def compiler_available() -> bool:
    """Whether torch.compile's CPU backend (inductor, C++ code) finds a compiler to build with."""
    import shutil

    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return any(name and shutil.which(name) for name in candidates)


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` and inductor's ``deterministic`` mode inside,
    the previous settings restored after.

    A compiled backward otherwise sums the embedding's gradient with parallel atomic adds, whose
    order (and so rounding) changes from call to call, and inductor may choose kernels by timing
    them; eager CPU kernels need no help. The training loop compiles on its first step, inside."""
    import torch
    import torch._inductor.config as inductor_config

    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with inductor_config.patch(deterministic=True):
            yield
    finally:
        torch.use_deterministic_algorithms(previous)


def loss_function(
    model: LlamaForCausalLM, config: TrainConfig
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(inputs, targets) -> mean cross-entropy in nats`` over the targets that are not
    :data:`IGNORE_INDEX`: bf16 autocast matmuls (``bf16_autocast``), float32 log-softmax;
    ``torch.compile``-d when ``config.compile``."""
    import torch

    def batch_loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16_autocast):
            logits = model(input_ids=inputs).logits
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
        )

    if not config.compile:
        return batch_loss
    # deterministic only when called inside deterministic_algorithms(True), as the loop does
    compiled: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.compile(
        batch_loss, dynamic=False
    )
    return compiled

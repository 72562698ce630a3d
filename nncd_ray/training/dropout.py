"""Residual dropout while training, as forward hooks, so the saved model stays a plain Llama."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nncd_ray.errors import ConfigError

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM


def check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), not {p}")


def add_residual_dropout(model: LlamaForCausalLM, p: float) -> list[Any]:
    """Dropout with probability ``p`` on the output of every decoder layer's attention and MLP
    block, in training mode only, as forward hooks (Llama has no residual dropout of its own);
    the state dict, and so the saved model, is unchanged. Returns the hook handles."""
    import torch

    check_dropout(p)
    if p == 0.0:
        return []

    def drop(module: torch.nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):  # attention: (hidden states, attention weights)
            return (torch.nn.functional.dropout(output[0], p, module.training), *output[1:])
        return torch.nn.functional.dropout(output, p, module.training)

    handles = []
    for layer in model.model.layers:
        handles.append(layer.self_attn.register_forward_hook(drop))
        handles.append(layer.mlp.register_forward_hook(drop))
    return handles

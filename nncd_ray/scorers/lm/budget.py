"""How much one forward pass may hold: the token budget and the prefix store's capacity.

On a GPU the default budget comes from free device memory and the model's shape, so a pass is
large enough to amortise its launch costs (tens of thousands of tokens drawn from many rows)
without running out of memory; if the estimate is wrong the scorer halves the budget and
retries the tile (see ``LMScorer``). On a CPU larger passes buy nothing once the matrices are
large enough to fill the cores, so the default stays moderate.
"""

from __future__ import annotations

from typing import Any

import torch

# default token budget on a CPU (tokens of padded input per forward pass)
CPU_TOKEN_BUDGET = 8192
# default budget on a GPU in half precision, where the batch plan is part of what a store
# records (bf16 rounding depends on batch shapes): the same on every GPU with the memory for it,
# derived from the device's total memory (not the free memory of the moment) when it has less
HALF_TOKEN_BUDGET = 65536
HALF_MEMORY_SHARE = 0.25
# the GPU budget's bounds: below 4,096 tokens a pass is launch-bound, above 131,072 nothing is
# gained (a pass already takes tens of milliseconds) while a misjudged estimate costs more
GPU_MIN_BUDGET, GPU_MAX_BUDGET = 4096, 131072
# share of free device memory a pass may use (the rest: allocator slack, the prefix store)
PASS_MEMORY_SHARE = 0.4
# share of free device memory for a tile's cached prefixes; on a CPU a fixed amount
PREFIX_MEMORY_SHARE = 0.2
CPU_PREFIX_BYTES = 1 << 30


def _dims(config: Any) -> tuple[int, int, int, int]:
    """(hidden, MLP width, key/value width, layers) of a transformers config."""
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 1))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // max(heads, 1))
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 1))
    return hidden, int(inner or 4 * hidden), kv_heads * head_dim, layers


def bytes_per_token(config: Any, dtype: torch.dtype, *, vocab: int, fused_head: bool) -> int:
    """Estimated peak device bytes per input token of a pass (no gradients): one layer's
    activations and MLP, the concatenated keys/values of the layer it is in (prefix included,
    counted as twice the input), the mask row, and, without a fused head, float32 logits."""
    hidden, inner, kv, _ = _dims(config)
    size = torch.tensor([], dtype=dtype).element_size()
    activations = size * (6 * hidden + 3 * inner)
    keys_values = 2 * kv * size * 3
    logits = 0 if fused_head else 8 * vocab
    return int(activations + keys_values + 4096 + logits)


def prefix_slot_bytes(config: Any, dtype: torch.dtype) -> int:
    """Bytes of one cached prefix position over every layer (keys and values)."""
    _, _, kv, layers = _dims(config)
    return 2 * kv * layers * torch.tensor([], dtype=dtype).element_size()


def auto_token_budget(model: Any, device: torch.device, *, fused_head: bool) -> int:
    """The default tokens per pass on ``device`` (a power of two).

    float32 on a GPU: from the free memory (any budget gives the same numbers up to float32
    rounding). Half precision on a GPU: :data:`HALF_TOKEN_BUDGET`, or less on a GPU whose total
    memory is too small, so that every GPU of a kind plans the same batches. CPU: fixed.
    """
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    dtype = next(model.parameters()).dtype
    vocab = int(model.config.vocab_size)
    per_token = bytes_per_token(model.config, dtype, vocab=vocab, fused_head=fused_head)
    free, total = torch.cuda.mem_get_info(device)
    if dtype == torch.float32:
        tokens, ceiling = int(free * PASS_MEMORY_SHARE // per_token), GPU_MAX_BUDGET
    else:
        tokens, ceiling = int(total * HALF_MEMORY_SHARE // per_token), HALF_TOKEN_BUDGET
    power = 1 << max(0, tokens.bit_length() - 1)
    return max(GPU_MIN_BUDGET, min(ceiling, power))


def prefix_capacity(model: Any, device: torch.device) -> int:
    """Prefix positions a tile may keep cached at once (over all its rows); computed once per
    scorer. In half precision it decides which rows share a pass, so, like the token budget, it
    comes from the GPU's total memory, the same for every GPU of a kind."""
    dtype = next(model.parameters()).dtype
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        available = int((free if dtype == torch.float32 else total) * PREFIX_MEMORY_SHARE)
    else:
        available = CPU_PREFIX_BYTES
    return max(1, available // prefix_slot_bytes(model.config, dtype))


__all__ = [
    "CPU_TOKEN_BUDGET",
    "GPU_MAX_BUDGET",
    "GPU_MIN_BUDGET",
    "HALF_TOKEN_BUDGET",
    "auto_token_budget",
    "bytes_per_token",
    "prefix_capacity",
    "prefix_slot_bytes",
]

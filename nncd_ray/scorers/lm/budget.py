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

from nncd_ray.scorers.lm.batching import DEFAULT_COST, PassCost

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


# The planner's cost model on a GPU (``pass_cost``), from estimates, the fixed cost of a pass
# then chosen among measured values:
# - arithmetic per byte of memory traffic, to weigh a gathered prefix slot (bytes) against a
#   token's projections and MLP (FLOPs): an H100/H200 does about 990 dense bf16 TFLOP/s over
#   3.4-4.8 TB/s of HBM (200-300 FLOP per byte; a gather reaches less than peak bandwidth).
#   With 200 the GPT-2-small shape's slot weighs 0.13 tokens, the weight the planner gave
#   every model before it knew their shapes;
# - the fixed cost of a pass (launching its kernels, their tails, a small pass's idle share of
#   the device), 8 ms, and the rate the device runs a model at meanwhile: 300 TFLOP/s in half
#   precision (40% of the bf16 peak), 50 TFLOP/s in float32 (no TF32 by default); a pass is
#   cut only where it saves more padding than that. Of 0.5, 2 and 8 ms (and the CPU's
#   shape-blind weights), 8 ms planned the fastest device-only tiles of the GPT-2-small shape
#   in ``bench.gpu_profile`` on an H100 (11,172 pairs/s in 42 passes against 10,885 in 63 at
#   2 ms and 9,851 in 115 at 0.5 ms; docs/bench/gpu-profile-h100.json);
# In float32 the arithmetic rate is a sixth (the bandwidth the same), so both weights shrink.
# On a CPU the planner keeps the weights measured there (``plan.DEFAULT_COST``).
GPU_FLOPS_PER_BYTE = 200.0
GPU_PASS_SECONDS = 8e-3
GPU_FLOPS = 3e14
GPU_FLOAT32_SLOWDOWN = 6.0


def _heads(config: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head width) of a transformers config."""
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 1))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // max(heads, 1))
    return heads, kv_heads, head_dim


def _dims(config: Any) -> tuple[int, int, int, int]:
    """(hidden, MLP width, key/value width, layers) of a transformers config."""
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    _, kv_heads, head_dim = _heads(config)
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


def pass_cost(model: Any, device: torch.device) -> PassCost:
    """The planner's cost model for ``model`` on ``device`` (see :class:`PassCost`), for padded
    passes (the scorer marks it ``packed`` where its runner runs fast passes).

    On a GPU: per layer and per token the projections and MLP cost ``2 × layer parameters``
    FLOPs; one query against one key costs ``4 × query width`` FLOPs (scores and weighted
    values); a gathered prefix slot moves its keys and values three times (read from the store,
    written to the pass's cache, read by attention) at :data:`GPU_FLOPS_PER_BYTE`; a pass's
    fixed cost is :data:`GPU_PASS_SECONDS` of the device running ``2 × parameters`` FLOPs per
    token at :data:`GPU_FLOPS` (both rates divided by :data:`GPU_FLOAT32_SLOWDOWN` in
    float32). Elsewhere: :data:`~nncd_ray.scorers.lm.plan.DEFAULT_COST`.
    """
    if device.type != "cuda":
        return DEFAULT_COST
    _, _, kv, layers = _dims(model.config)
    heads, _, head_dim = _heads(model.config)
    embeddings = {id(m.weight): m.weight.numel() for m in _embedding_modules(model)}
    total = sum(p.numel() for p in model.parameters())
    per_token = 2.0 * max(total - sum(embeddings.values()), 1) / max(layers, 1)
    size = next(model.parameters()).element_size()
    slot_bytes = 3 * 2 * kv * size
    slowdown = GPU_FLOAT32_SLOWDOWN if size >= 4 else 1.0
    return PassCost(
        attention=4.0 * heads * head_dim / per_token,
        prefix_slot=slot_bytes * GPU_FLOPS_PER_BYTE / slowdown / per_token,
        overhead_tokens=GPU_PASS_SECONDS * GPU_FLOPS / slowdown / (2.0 * total),
    )


def _embedding_modules(model: Any) -> list[Any]:
    modules = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            continue
        if module is not None and isinstance(getattr(module, "weight", None), torch.Tensor):
            modules.append(module)
    return modules


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


def prefix_capacity(model: Any, device: torch.device, *, device_memory: int | None = None) -> int:
    """Prefix positions a tile may keep cached at once (over all its rows); computed once per
    scorer. In half precision it decides which rows share a pass, so, like the token budget, it
    comes from the GPU's total memory, the same for every GPU of a kind. ``device_memory``
    (bytes): a GPU's memory, free and total, instead of asking CUDA (a plan for another GPU)."""
    dtype = next(model.parameters()).dtype
    if device.type == "cuda":
        if device_memory is None:
            free, total = torch.cuda.mem_get_info(device)
        else:
            free = total = device_memory
        available = int((free if dtype == torch.float32 else total) * PREFIX_MEMORY_SHARE)
    else:
        available = CPU_PREFIX_BYTES
    return max(1, available // prefix_slot_bytes(model.config, dtype))


__all__ = [
    "CPU_TOKEN_BUDGET",
    "GPU_FLOAT32_SLOWDOWN",
    "GPU_FLOPS",
    "GPU_FLOPS_PER_BYTE",
    "GPU_MAX_BUDGET",
    "GPU_MIN_BUDGET",
    "GPU_PASS_SECONDS",
    "HALF_TOKEN_BUDGET",
    "auto_token_budget",
    "bytes_per_token",
    "pass_cost",
    "prefix_capacity",
    "prefix_slot_bytes",
]

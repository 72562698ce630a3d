"""KV caches for the prefix-cached LM scorer (transformers 5.x ``DynamicCache`` API).

One row's prefix ``[b] + ids(x) + [e]`` is run once; its per-layer keys/values then serve every
column batch. :func:`expanded_cache` builds a fresh cache per forward pass (the forward pass mutates
its cache, so one is never reused) whose layers hold the prefix ``expand``-ed over the batch: a view
with stride 0 along the batch, no copy. :class:`PrefixLayer` appends the batch's new keys/values by
writing the broadcast prefix and the new states into one fresh tensor, which on CPU is about 5×
faster than ``torch.cat`` on a stride-0 view (measured: 1.1 ms against 5.3 ms for 12 × 8 heads ×
200 positions × 64) and leaves the prefix untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# one prefix's KV cache: per layer (keys, values), each (1, kv_heads, prefix_len, head_dim)
PrefixLayers = list[tuple[torch.Tensor, torch.Tensor]]


def _append(past: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``cat([past, new], dim=-2)`` where ``past`` may be a stride-0 (expanded) view."""
    batch, heads, length, dim = new.shape
    out = new.new_empty(batch, heads, past.shape[-2] + length, dim)
    out[..., : past.shape[-2], :] = past  # broadcast copy, fast for expanded views
    out[..., past.shape[-2] :, :] = new
    return out


class PrefixLayer(DynamicLayer):
    """A full-attention cache layer that starts from (views of) a shared prefix's keys/values."""

    # never auto-register in transformers' layer-type mappings (that would replace DynamicLayer)
    _layer_type = None

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None or self.values is None:  # set in __init__; reset() clears them
            raise RuntimeError("PrefixLayer used after reset(); build a fresh cache per pass")
        keys = _append(self.keys, key_states)
        values = _append(self.values, value_states)
        self.keys, self.values = keys, values
        return keys, values


def plain_dynamic_cache(config: Any) -> bool:
    """Whether every layer of this model's ``DynamicCache`` is a plain full-attention
    ``DynamicLayer``: then prefixes can be batched with padding and sliced, and the cache can hold
    expanded views in :class:`PrefixLayer` s. Sliding-window or linear-attention layers take the
    safe path (one prefix per pass, cache filled through the layers' own ``update``)."""
    cache = DynamicCache(config=config)
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def prefix_layers(cache: Any, row: int, length: int) -> PrefixLayers:
    """Views of one batch row's first ``length`` cached positions in every layer (no copy)."""
    return [
        (layer.keys[row : row + 1, :, :length], layer.values[row : row + 1, :, :length])
        for layer in cache.layers
    ]


def expanded_cache(config: Any, prefix: PrefixLayers, batch: int, *, zero_copy: bool) -> Any:
    """A fresh ``DynamicCache`` whose every layer holds ``prefix`` expanded over ``batch`` rows.

    Build one per forward pass and never reuse it (the forward pass mutates it). With
    ``zero_copy`` the layers are :class:`PrefixLayer` s holding ``expand`` views; otherwise the
    cache is filled through ``DynamicCache(ddp_cache_data, config=config)``, which copies once but
    respects every layer type of the model.
    """
    views = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix]
    if not zero_copy:
        return DynamicCache(views, config=config)
    cache = DynamicCache(config=config)
    if len(cache.layers) != len(views):
        raise ValueError(f"prefix has {len(views)} layers, the model's cache {len(cache.layers)}")
    cache.layers[:] = [PrefixLayer(keys, values) for keys, values in views]
    return cache


__all__ = ["PrefixLayer", "PrefixLayers", "expanded_cache", "plain_dynamic_cache", "prefix_layers"]

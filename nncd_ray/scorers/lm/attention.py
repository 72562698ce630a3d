"""Attention layout of the scorer's forward passes: which layers a model has, its 4D masks, and
the KV caches that carry a row's prefix into the passes of its columns.

Every pass is built from *true positions*: each input token and each cached key has the position
it has in its own sequence ``[b] x [e] y [e]``, wherever it sits in the batch. Masks are made
from those positions (a key is visible when it is real, not later than the query and, for a
sliding-window layer, within the window), so padding anywhere, several rows' prefixes in one
pass and a prefix cached in another pass all give the code lengths of one unpadded sequence.
Masks are built on the device by broadcasting integer tensors (no host synchronisation) and
passed to the model ready-made (transformers returns a 4D mask as given, and models with hybrid
layers take a dict keyed by layer type), so the model's own mask code, which synchronises on
padding, never runs on the fast path.

Layer kinds come from the model's own ``DynamicCache(config=...)``: plain full-attention layers
and sliding-window layers are supported; anything else (linear attention, chunked attention,
shared KV) makes :func:`attention_layout` return ``None`` and the scorer take its plain path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from nncd_ray.scorers.lm.fast_attention import IMPLEMENTATION

FULL = "full_attention"
SLIDING = "sliding_attention"
# attention implementations whose masks are plain 4D tensors (bool for SDPA, additive for eager)
MASKABLE = ("sdpa", "eager")


@dataclass(frozen=True, kw_only=True)
class AttentionLayout:
    """What the masks of one model must express."""

    # transformers' attention implementation: "sdpa" (bool masks) or "eager" (additive masks)
    implementation: str
    # sliding window in tokens (a key at distance >= window is invisible), None without one
    window: int | None
    # layer types present, for models that take a dict of masks; None: one mask for all layers
    mask_types: tuple[str, ...] | None
    # per layer: "full_attention" or "sliding_attention"
    layer_kinds: tuple[str, ...]

    def describe(self) -> str:
        kinds = sorted(set(self.layer_kinds))
        window = f", window {self.window}" if self.window is not None else ""
        return f"{'+'.join(kinds)}{window} ({self.implementation})"


def attention_layout(model: Any) -> AttentionLayout | None:
    """The model's layout, or None when its layers are not all full or sliding-window attention
    (or its attention implementation takes no 4D mask): the scorer's plain path handles those."""
    config = model.config
    implementation = getattr(config, "_attn_implementation", None)
    if implementation == IMPLEMENTATION:  # fast_attention's: transformers' SDPA otherwise
        implementation = "sdpa"
    if implementation not in MASKABLE:
        return None
    try:
        layers = DynamicCache(config=config).layers
    except (TypeError, ValueError, AttributeError):
        return None
    if not layers:
        return None
    kinds: list[str] = []
    windows: set[int] = set()
    for layer in layers:
        if type(layer) is DynamicLayer:
            kinds.append(FULL)
        elif type(layer) is DynamicSlidingWindowLayer:
            kinds.append(SLIDING)
            windows.add(int(layer.sliding_window))
        else:
            return None
    if len(windows) > 1:
        return None
    layer_types = getattr(config, "layer_types", None)
    mask_types = tuple(sorted(set(kinds))) if isinstance(layer_types, list | tuple) else None
    if mask_types is None and len(set(kinds)) > 1:
        return None  # hybrid layers without a per-type mask mapping: not expressible
    return AttentionLayout(
        implementation=str(implementation),
        window=windows.pop() if windows else None,
        mask_types=mask_types,
        layer_kinds=tuple(kinds),
    )


def attention_masks(
    layout: AttentionLayout,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_valid: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The 4D mask(s) ``(batch, 1, queries, keys)`` for true positions.

    ``query_positions``: (batch, queries) int64; ``key_positions``, ``key_valid``: (batch, keys)
    int64 and bool. A query sees a key when the key is valid and its position is not later than
    the query's; sliding-window layers also need ``query - key < window``. A padding query sees
    the real keys before it, so no row of the mask is empty (an empty row is NaN in SDPA).
    """
    queries = query_positions[:, None, :, None]
    keys = key_positions[:, None, None, :]
    visible = key_valid[:, None, None, :] & (keys <= queries)
    masks = {FULL: visible}
    if layout.window is not None:
        masks[SLIDING] = visible & (keys > queries - layout.window)
    converted = {kind: _to_implementation(mask, layout, dtype) for kind, mask in masks.items()}
    if layout.mask_types is not None:
        return {kind: converted[kind] for kind in layout.mask_types}
    return converted[SLIDING if layout.window is not None else FULL]


def _to_implementation(mask: torch.Tensor, layout: AttentionLayout, dtype: torch.dtype) -> Any:
    if layout.implementation == "sdpa":
        return mask
    # eager attention adds the mask to the scores: 0 where visible, the dtype's minimum elsewhere
    # (torch.full, not torch.tensor: a tensor built from a Python number on a GPU is a copy that
    # waits for the device)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=mask.device)
    return torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device), blocked)


class CaptureLayer(DynamicLayer):
    """A full-attention layer that keeps every key/value of a pass, even for sliding-window
    layers (whose own cache would drop keys outside the window that a later pass may need:
    the masks, not the cache, enforce the window)."""

    # never auto-register in transformers' layer-type mappings (that would replace DynamicLayer)
    _layer_type = None


class PrefixLayer(DynamicLayer):
    """A layer whose past is, for each batch row, one row of a prefix store.

    The store layer ``(store rows, prefix slots + room, kv_heads, head_dim)`` is slot-major: it
    holds prefixes right-aligned in its first ``slots`` positions and leaves ``room`` free after
    them. ``update`` gathers the last ``width`` prefix slots *and the room after them* for the
    pass's rows in one ``index_select`` (each row one contiguous block, copied as 8-byte words),
    writes the new keys/values into the room (one contiguous copy), and returns
    ``(batch, kv_heads, width + new, head_dim)`` views: the strides a model's own projections
    give attention. It keeps nothing: a pass holds one layer's keys at a time, and the store is
    never written. ``in_place``: ``update`` returns the new keys/values alone, for attention
    that reads the prefixes from the store itself (``fast_attention``).
    """

    _layer_type = None

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        *,
        rows: torch.Tensor,
        slots: int,
        width: int,
        in_place: bool = False,
    ) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self.rows, self.slots, self.width = rows, slots, width
        self.in_place = in_place

    def get_seq_length(self) -> int:
        return self.width

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None or self.values is None:  # set in __init__; reset() clears them
            raise RuntimeError("PrefixLayer used after reset(); build a fresh cache per pass")
        if self.in_place:
            return key_states, value_states
        new = key_states.shape[-2]
        if self.keys.shape[1] - self.slots < new:
            raise ValueError(f"{new} new positions do not fit the store's room after the prefix")
        window = slice(self.slots - self.width, self.slots + new)
        out = []
        for store, states in ((self.keys, key_states), (self.values, value_states)):
            words = as_words(store)
            gathered = words[:, window].index_select(0, self.rows).view(store.dtype)
            gathered[:, self.width :] = states.transpose(1, 2)
            out.append(gathered.transpose(1, 2))
        return out[0], out[1]


def as_words(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's memory as the widest integers (8, 4 or 2 bytes) that tile its last
    dimension, so that copying it moves whole words (a half-precision gather copies 4 values
    per element); the tensor itself when none does."""
    row = tensor.shape[-1] * tensor.element_size()
    for dtype in (torch.int64, torch.int32, torch.int16):
        if dtype.itemsize < tensor.element_size() or row % dtype.itemsize:
            continue
        return tensor.view(dtype) if dtype.itemsize != tensor.element_size() else tensor
    return tensor


def capture_cache(layers: int) -> DynamicCache:
    """A fresh cache that records every layer's keys/values of one pass in full."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = None
    cache.layers = [CaptureLayer() for _ in range(layers)]
    return cache


def prefix_cache(
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    rows: torch.Tensor,
    slots: int,
    width: int,
    *,
    in_place: bool = False,
) -> DynamicCache:
    """A fresh cache (one per pass: the forward mutates caches) whose layers read the last
    ``width`` of ``slots`` prefix positions of store rows ``rows`` from the slot-major store
    ``layers`` (see :class:`PrefixLayer`)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = None
    cache.layers = [
        PrefixLayer(keys, values, rows=rows, slots=slots, width=width, in_place=in_place)
        for keys, values in layers
    ]
    return cache


__all__ = [
    "FULL",
    "SLIDING",
    "AttentionLayout",
    "CaptureLayer",
    "PrefixLayer",
    "as_words",
    "attention_layout",
    "attention_masks",
    "capture_cache",
    "prefix_cache",
]

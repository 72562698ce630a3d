"""Running planned passes on the device, with nothing read back to the host until a tile ends.

A :class:`PassRunner` turns a :class:`~nncd_ray.scorers.lm.plan.PassPlan` into one forward pass:
its integer arrays travel in one pinned buffer with one non-blocking copy; masks, prefix gathers
and the scoring indices are built on the device; −ln p goes into a float64 accumulator on the
device with ``index_add_``. The only host synchronisation of a tile is reading the accumulator
at its end (``tests/test_lm_gpu.py`` checks that with CUDA's sync debug mode). A runner with
``fast_attention`` installed runs its passes packed instead: the real tokens as one sequence,
no mask, prefixes read in place (see that module).

The :class:`PrefixStore` holds a group of row prefixes' keys/values, slot-major and
right-aligned (a prefix of length L occupies the last L slots), so that a continuation pass
takes the last ``width`` slots of the rows it needs with one ``index_select`` per layer, each
row one contiguous block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nncd_ray.scorers.lm.attention import (
    AttentionLayout,
    attention_masks,
    capture_cache,
    prefix_cache,
)
from nncd_ray.scorers.lm.devices import attention_kernels
from nncd_ray.scorers.lm.fast_attention import (
    PREFIX,
    PassAttention,
    grouped_by_row,
    kernel_for,
    packed,
    padded,
    pass_kind,
    prefix_groups,
)
from nncd_ray.scorers.lm.head import (
    HeadRequest,
    ScoringHead,
    chunk_elements,
    target_nll,
    tokens_nll,
)

if TYPE_CHECKING:
    from nncd_ray.scorers.lm.plan import PassPlan


@dataclass(kw_only=True)
class PassCounters:
    """Running totals since the scorer was built (per instance; for speed and FLOP reports)."""

    # documents cut to max_doc_tokens (each time one is encoded)
    documents_truncated: int = 0
    # non-padding input tokens run through the model: FLOPs ≈ 2 × parameters × model_tokens
    model_tokens: int = 0
    # input tokens including padding (batch × width, summed over forward passes)
    padded_tokens: int = 0
    # cached prefix slots attended to by continuation passes (batch × prefix width, summed)
    prefix_slots: int = 0
    forward_passes: int = 0
    # of those, passes whose attention ran in fast_attention's variable-length kernels
    fast_passes: int = 0
    # tiles restarted with half the token budget after running out of device memory
    oom_backoffs: int = 0


@dataclass(kw_only=True)
class PrefixStore:
    """Keys/values of ``rows`` prefixes per layer, slot-major ``(rows, slots + room, kv_heads,
    head_dim)``: a prefix of length L fills slots ``slots - L .. slots - 1`` (right-aligned)
    and ``room`` positions stay free after them, where a continuation's own keys go (see
    :class:`~nncd_ray.scorers.lm.attention.PrefixLayer`)."""

    rows: int
    slots: int
    room: int
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    def put(
        self, cache: Any, starts: torch.Tensor, store_rows: torch.Tensor, lengths: torch.Tensor
    ) -> None:
        """Copy the sequences of a capture cache (``(batch, kv_heads, positions, head_dim)``)
        that start at flat positions ``starts`` (``batch row × positions + position``; a packed
        pass is one batch row) and hold ``lengths`` tokens into store rows ``store_rows``,
        right-aligned."""
        shift = self.slots - lengths  # slot t of the store holds source position t - shift
        source = torch.arange(self.slots, device=lengths.device)[None, :] - shift[:, None]
        # slots before the prefix copy the sequence's position 0 (never read)
        source = source.clamp(min=0) + starts[:, None]
        for index, layer in enumerate(cache.layers):
            for name, tensor in (("keys", layer.keys), ("values", layer.values)):
                positions = tensor.shape[2]
                # (rows, slots, kv_heads, head_dim), one index kernel, no copy of the pass
                aligned = tensor.transpose(1, 2)[source // positions, source % positions]
                target = getattr(self, name)
                if len(target) <= index:
                    heads, dim = aligned.shape[2], aligned.shape[3]
                    target.append(aligned.new_empty(self.rows, self.slots + self.room, heads, dim))
                target[index][:, : self.slots].index_copy_(0, store_rows, aligned)

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(zip(self.keys, self.values, strict=True))


class PassRunner:
    """Runs pass plans of one model on one device (see the module docstring)."""

    def __init__(
        self,
        *,
        model: Any,
        layout: AttentionLayout | None,
        head: ScoringHead | None,
        device: torch.device,
        cache_argument: str,
        counters: PassCounters,
        fast: bool = False,
    ) -> None:
        self.model = model
        # fast_attention installed on the model: its kinds of pass run there, in this kernel
        self.fast = fast
        self.kernel = kernel_for(device)
        # None: the model builds its own masks from a 2D padding mask (the plain path)
        self.layout = layout
        self.head = head
        self.device = device
        self.cache_argument = cache_argument
        self.counters = counters
        self.layers = int(model.config.num_hidden_layers)
        self.dtype = next(model.parameters()).dtype
        self._placeholder: Any = None  # see _unused_mask

    def to_device(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        """int64 host arrays -> device tensors: one pinned buffer, one non-blocking copy."""
        flat = [np.ascontiguousarray(a, dtype=np.int64).ravel() for a in arrays]
        sizes = [a.size for a in flat]
        packed = torch.from_numpy(np.concatenate(flat) if flat else np.zeros(0, np.int64))
        if self.device.type == "cuda":
            packed = packed.pin_memory().to(self.device, non_blocking=True)
        parts = torch.split(packed, sizes)
        return [part.view(array.shape) for part, array in zip(parts, arrays, strict=True)]

    def run(
        self,
        plan: PassPlan,
        accumulator: torch.Tensor,
        *,
        store: PrefixStore | None = None,
        first_tokens: torch.Tensor | None = None,
        pair_block: torch.Tensor | None = None,
    ) -> None:
        """Run one pass and add its −ln p (nats) into ``accumulator`` (float64, device).

        ``store``: the prefix store that continuation passes read and document passes with
        captures fill. ``first_tokens`` (columns,): each column's first token, scored at the
        plan's ``dist_at`` positions into ``pair_block`` (prefix-store rows × columns view of
        the accumulator).
        """
        kind = pass_kind(plan.positions, plan.lengths, plan.prefix_lengths) if self.fast else None
        if self.fast and kind is None:  # planned packed (see batching.PassCost.packed)
            raise RuntimeError("a pass of the fast path is neither causal nor a continuation")
        if kind == PREFIX:
            plan = grouped_by_row(plan)
        batch, width = plan.input_ids.shape
        inputs = padded(plan) if kind is None else packed(plan)  # fast passes: no padding
        groups: list[np.ndarray] = []
        longest = 0
        if kind == PREFIX and store is not None:
            *groups, longest = prefix_groups(
                plan, inputs.starts, store.slots, store.slots + store.room
            )
        (
            input_ids,
            positions,
            lengths,
            starts,
            score_at,
            score_targets,
            score_into,
            dist_at,
            dist_rows,
            capture_at,
            capture_rows,
            prefix_rows,
            prefix_lengths,
            *group_arrays,
        ) = self.to_device(
            inputs.input_ids,
            inputs.positions,
            plan.lengths,
            inputs.starts,
            inputs.score_at,
            plan.score_targets,
            plan.score_into,
            inputs.dist_at,
            plan.dist_rows,
            plan.capture_at,
            plan.capture_rows,
            plan.prefix_rows if plan.prefix_rows is not None else np.zeros(0, np.int64),
            plan.prefix_lengths if plan.prefix_lengths is not None else np.zeros(0, np.int64),
            *groups,
        )
        wants_dist = first_tokens is not None and plan.dist_at.size > 0
        request = HeadRequest(
            positions=score_at,
            targets=score_targets,
            dist_positions=dist_at if wants_dist else None,
            dist_targets=first_tokens if wants_dist else None,
        )
        cache = None
        if plan.prefix_rows is not None:
            if store is None:
                raise ValueError("a continuation pass needs the prefix store")
            cache = prefix_cache(
                store.layers(),
                prefix_rows,
                store.slots,
                plan.prefix_width,
                in_place=kind == PREFIX,
            )
        elif plan.capture_at.size:
            cache = capture_cache(self.layers)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "position_ids": positions,
            "use_cache": cache is not None,
        }
        if cache is not None:
            kwargs[self.cache_argument] = cache
        if kind is None:
            valid = torch.arange(width, device=self.device)[None, :] < lengths[:, None]
            kwargs["attention_mask"] = self._masks(plan, positions, valid, prefix_lengths)
        else:
            kwargs["attention_mask"] = self._unused_mask()
            kwargs["nncd_pass"] = self._pass_attention(
                kind, plan, store, starts, group_arrays, longest
            )
            self.counters.fast_passes += 1
        nll, dist_nll = self._forward(kwargs, request)
        accumulator.index_add_(0, score_into, nll.double())
        if dist_nll is not None and pair_block is not None:
            pair_block.index_add_(0, dist_rows, dist_nll.double())
        if plan.capture_at.size and store is not None and cache is not None:
            captured = lengths.index_select(0, capture_at)
            store.put(cache, starts.index_select(0, capture_at), capture_rows, captured)
        self.counters.forward_passes += 1
        self.counters.model_tokens += plan.real_tokens
        self.counters.padded_tokens += plan.padded_tokens if kind is None else plan.real_tokens
        self.counters.prefix_slots += batch * plan.prefix_width

    def _pass_attention(
        self,
        kind: str,
        plan: PassPlan,
        store: PrefixStore | None,
        starts: torch.Tensor,
        groups: list[torch.Tensor],
        longest: int,
    ) -> PassAttention:
        """The ``nncd_pass`` keyword of a packed pass that ``fast_attention`` runs: each batch
        row's first position in the packed sequence and, continuing prefixes, the pass's prefix
        groups (``fast_attention.prefix_groups``, on the device)."""
        common = {
            "kind": kind,
            "kernel": self.kernel,
            "starts": starts.int(),
            "longest": int(plan.lengths.max()),
        }
        if kind != PREFIX or store is None:
            return PassAttention(**common)
        queries, prefix_starts, prefix_lengths = (array.int() for array in groups)
        return PassAttention(
            **common,
            store=store.layers(),
            prefix_queries=queries,
            prefix_starts=prefix_starts,
            prefix_lengths=prefix_lengths,
            longest_group=longest,
            width=plan.prefix_width,
        )

    def _unused_mask(self) -> Any:
        """A placeholder 4D mask for packed passes, whose attention takes no mask: transformers
        passes a 4D mask through as given, so the model builds none (one of ``tokens²``)."""
        if self._placeholder is None:
            mask = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=self.device)
            types = self.layout.mask_types if self.layout is not None else None
            self._placeholder = {kind: mask for kind in types} if types else mask
        return self._placeholder

    def _masks(
        self,
        plan: PassPlan,
        positions: torch.Tensor,
        valid: torch.Tensor,
        prefix_lengths: torch.Tensor,
    ) -> Any:
        if self.layout is None:  # plain path: the model's own masks from a 2D padding mask
            return valid.long()
        keys, keys_valid = positions, valid
        if plan.prefix_rows is not None:
            width = plan.prefix_width
            # right-aligned prefix: slot s holds position s - (width - length), real when >= 0
            slots = torch.arange(width, device=self.device)[None, :]
            prefix_positions = slots - (width - prefix_lengths)[:, None]
            keys = torch.cat([prefix_positions, positions], dim=1)
            keys_valid = torch.cat([prefix_positions >= 0, valid], dim=1)
        return attention_masks(self.layout, positions, keys, keys_valid, self.dtype)

    def _forward(
        self, kwargs: dict[str, Any], request: HeadRequest
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        head = self.head
        if head is None:  # no scoring head: full logits from the model, gathered after
            logits = self._call_model(kwargs).logits
            flat = logits.reshape(-1, logits.shape[-1])
            return _chunked_nll(flat, request, gather=True)
        head.request, head.result = request, None
        try:
            output = self._call_model(kwargs)
            if head.fused:
                if head.result is None:
                    raise RuntimeError("the scoring head was not called by the model's forward")
                return head.result.nll, head.result.dist_nll
            return _chunked_nll(output.logits[0], request, gather=False)
        finally:
            head.request, head.result = None, None

    def _call_model(self, kwargs: dict[str, Any]) -> Any:
        with attention_kernels(self.device):  # never cuDNN's attention on CUDA (see devices)
            return self.model(**kwargs)


def _chunked_nll(
    logits: torch.Tensor, request: HeadRequest, *, gather: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """−ln p from logits rows: the request's positions (``gather``: index the full ``(batch ×
    width, vocab)`` logits; else the rows are already the picked positions, dist rows last)."""
    scored = request.positions.shape[0]
    step = max(1, chunk_elements(logits.device) // logits.shape[-1])
    parts = []
    for start in range(0, scored, step):
        stop = min(start + step, scored)
        rows = (
            logits.index_select(0, request.positions[start:stop]) if gather else logits[start:stop]
        )
        parts.append(target_nll(rows, request.targets[start:stop]))
    nll = torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float32)
    dist_nll = None
    if request.dist_positions is not None and request.dist_targets is not None:
        rows = logits.index_select(0, request.dist_positions) if gather else logits[scored:]
        dist_nll = tokens_nll(rows, request.dist_targets)
    return nll, dist_nll


__all__ = ["PassCounters", "PassRunner", "PrefixStore"]

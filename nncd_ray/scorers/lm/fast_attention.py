"""Variable-length flash attention for the scorer's passes on a GPU, reading cached prefixes
where the prefix store holds them instead of gathering a copy per item.

The masked passes of :mod:`~nncd_ray.scorers.lm.passes` give SDPA a boolean mask of true
positions, which only the memory-efficient kernel takes, and a continuation pass first copies
each item's prefix keys/values out of the store (``attention.PrefixLayer``): on an H100 that copy
was 15% of a GPT-2-small-shape tile's device time. Two kinds of pass have a simpler structure,
recognised on the host from the plan (:func:`pass_kind`), and run here instead, *packed*: the
batch's real tokens as one sequence ``(1, tokens)`` (:func:`packed`), so no padding token runs
through the model's projections, MLP or attention, and the planner fills a pass with real
tokens up to the budget (``batching.PassCost.packed``):

- **causal**: every batch row is one sequence at positions 0, 1, …: causal flash attention over
  each row's tokens (``cu_seqlens`` at the rows' starts), nothing else;
- **prefix**: every batch row continues one cached prefix of length L at positions L, L + 1, …:
  flash attention over the prefix read in place (``cu_seq_k`` at the row's first prefix slot in
  the flattened store, ``seqused_k`` = L), and causal flash attention over the row's own keys,
  merged by their log-sum-exps (:func:`merge`), which is attention over the union of the keys.
  The pass's batch rows are first ordered by the prefix they continue (:func:`grouped_by_row`),
  so that the prefix half runs one sequence per prefix (all its items' queries) instead of one
  per item: on an H100, one GPT-2-small-shape layer's prefix half took 0.11 ms per prefix
  against 0.40 ms per item (``bench.prefix_attention``, packed queries).

It is used on CUDA in half precision for models whose layers are all full attention without
logit soft-capping (:func:`install`), after a probe that the kernel takes these arguments and
agrees with :func:`varlen_reference`; any other pass, model or device keeps the masked SDPA path.
The model's attention implementation becomes :data:`IMPLEMENTATION`, which is transformers' SDPA
for every call without a :class:`PassAttention` keyword. On a CPU the kernel is
:func:`varlen_reference` (plain torch), which tests use by adding ``"cpu"`` to
:data:`IN_PLACE_DEVICES`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

if TYPE_CHECKING:
    from nncd_ray.scorers.lm.plan import PassPlan

log = logging.getLogger(__name__)

IMPLEMENTATION = "nncd_sdpa"
# what a store's fingerprint records of the batches fast passes run in (bf16 rounding depends
# on them): packed passes, planned as such (``batching.PassCost.packed``)
FAST_PLAN = "flash-varlen, packed passes, prefixes in place"
# devices whose scorers run the kinds of pass above here (CUDA: flash attention; others: the
# reference, for tests)
IN_PLACE_DEVICES: tuple[str, ...] = ("cuda",)
CAUSAL = "causal"
PREFIX = "prefix"


def varlen_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    *,
    causal: bool,
    seqused_k: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash attention's variable-length forward in plain torch.

    Sequence b's queries are ``q[cu_q[b]:cu_q[b+1]]`` and its keys ``k[cu_k[b]:]``,
    ``seqused_k[b]`` of them (else ``cu_k[b+1] - cu_k[b]``); ``causal`` aligns the diagonal
    bottom-right. Returns the packed output (like ``q``) and the log-sum-exp ``(heads, queries)``
    in float32.
    """
    cu_q, cu_k = cu_q.long(), cu_k.long()
    lens_q = cu_q[1:] - cu_q[:-1]
    lens_k = seqused_k.long() if seqused_k is not None else cu_k[1:] - cu_k[:-1]
    j = torch.arange(max_q, device=q.device)
    t = torch.arange(max_k, device=q.device)
    q_valid = j[None, :] < lens_q[:, None]
    k_valid = t[None, :] < lens_k[:, None]
    queries = q[(cu_q[:-1, None] + j).clamp(max=q.shape[0] - 1)].float()
    at = (cu_k[:-1, None] + t).clamp(max=k.shape[0] - 1)
    # past a sequence's keys (e.g. a store's unwritten room) may lie anything, NaN included: zeros,
    # as flash attention loads them
    keys = k[at].float().masked_fill(~k_valid[:, :, None, None], 0.0)
    values = v[at].float().masked_fill(~k_valid[:, :, None, None], 0.0)
    if keys.shape[2] != queries.shape[2]:  # grouped-query attention
        keys = keys.repeat_interleave(queries.shape[2] // keys.shape[2], dim=2)
        values = values.repeat_interleave(queries.shape[2] // values.shape[2], dim=2)
    scale = queries.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("nqhd,nkhd->nhqk", queries, keys) * scale
    visible = k_valid[:, None, :].expand(-1, max_q, -1)
    if causal:
        shift = (lens_k - lens_q)[:, None, None]
        visible = visible & (t[None, None, :] <= j[None, :, None] + shift)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (n, heads, max_q); -inf where nothing is visible
    weights = torch.exp(scores - lse[..., None]).nan_to_num(0.0)
    out = torch.einsum("nhqk,nkhd->nqhd", weights, values)
    return out[q_valid].to(q.dtype), lse.transpose(1, 2)[q_valid].t().contiguous()


def varlen_flash(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    *,
    causal: bool,
    seqused_k: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`varlen_reference` by torch's flash-attention kernel (CUDA, half precision)."""
    out, lse, *_ = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, scale=scale, seqused_k=seqused_k
    )
    return out, lse


def merge(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Attention over two disjoint key sets from each one's output and log-sum-exp: the output
    over their union, ``second + w (first - second)`` with ``w = sigmoid(lse1 - lse2)``.

    In half precision that is one ``torch.lerp`` kernel (float arithmetic inside, the weight
    rounded to the outputs' dtype), not the six element-wise passes of float32 temporaries that
    took ~0.2 s of a GPT-2-small-shape tile's 0.93 s on an H100 (``bench.gpu_profile``).
    """
    (out1, lse1), (out2, lse2) = first, second
    weight = torch.sigmoid(lse1 - lse2).t()[..., None]  # (queries, heads, 1), float32
    if out1.dtype == torch.float32:
        return out2 + weight * (out1 - out2)
    return torch.lerp(out2, out1, weight.to(out1.dtype))


@dataclass(frozen=True, kw_only=True)
class PassAttention:
    """One pass's attention, given to the model as the keyword ``nncd_pass``."""

    kind: str  # CAUSAL or PREFIX
    # the kernel: varlen_flash on CUDA, varlen_reference elsewhere
    kernel: Any
    # (batch + 1,) int32: each batch row's first position in the packed sequence (see packed)
    starts: torch.Tensor
    # the most real tokens of a batch row
    longest: int
    # PREFIX: per layer the store's (keys, values), slot-major (rows, slots + room, heads, dim);
    # for each group of batch rows continuing one prefix (see prefix_groups): its first
    # position in the packed sequence ((groups + 1,) int32), the prefix's first slot in the
    # flattened store ((groups + 1,) int32, the last never read) and its length ((groups,)
    # int32); the most positions of a group, and the longest prefix of the pass
    store: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    prefix_queries: torch.Tensor | None = None
    prefix_starts: torch.Tensor | None = None
    prefix_lengths: torch.Tensor | None = None
    longest_group: int = 0
    width: int = 0


def attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    *,
    nncd_pass: PassAttention | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The model's attention function (:data:`IMPLEMENTATION`): transformers' SDPA unless the
    pass is one of this module's kinds."""
    if nncd_pass is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    batch, heads, length, dim = query.shape
    scale = kwargs.get("scaling")
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * length, value.shape[1], dim)
    starts, kernel, longest = nncd_pass.starts, nncd_pass.kernel, nncd_pass.longest
    own = kernel(q, k, v, starts, starts, longest, longest, causal=True, scale=scale)
    if nncd_pass.kind == CAUSAL:
        out = own[0]
    else:
        assert nncd_pass.store is not None and nncd_pass.prefix_starts is not None
        assert nncd_pass.prefix_queries is not None
        store_keys, store_values = nncd_pass.store[module.layer_idx]
        prefix = kernel(
            q,
            store_keys.view(-1, *store_keys.shape[2:]),
            store_values.view(-1, *store_values.shape[2:]),
            nncd_pass.prefix_queries,
            nncd_pass.prefix_starts,
            nncd_pass.longest_group,
            nncd_pass.width,
            causal=False,
            seqused_k=nncd_pass.prefix_lengths,
            scale=scale,
        )
        out = merge(prefix, own)
    return out.view(batch, length, heads, dim), None


def pass_kind(
    positions: np.ndarray, lengths: np.ndarray, prefix_lengths: np.ndarray | None
) -> str | None:
    """CAUSAL or PREFIX when the plan's true positions have that structure (from the host's
    arrays: no device work), else None."""
    width = positions.shape[1]
    real = np.arange(width)[None, :] < lengths[:, None]
    offset = np.zeros((positions.shape[0], 1), np.int64)
    if prefix_lengths is not None:
        offset = offset + prefix_lengths[:, None]
    if not np.array_equal(positions[real], (np.arange(width)[None, :] + offset)[real]):
        return None
    if prefix_lengths is None:
        return CAUSAL
    return PREFIX if int(prefix_lengths.min(initial=1)) > 0 else None


def grouped_by_row(plan: PassPlan) -> PassPlan:
    """``plan`` with its batch rows ordered (stably) by the prefix they continue, its flat
    positions and batch-row indices moved with them: the same pass, the same code lengths."""
    assert plan.prefix_rows is not None and plan.prefix_lengths is not None
    order = np.argsort(plan.prefix_rows, kind="stable")
    if np.array_equal(order, np.arange(order.size)):
        return plan
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    width = plan.input_ids.shape[1]

    def moved(flat: np.ndarray) -> np.ndarray:
        return inverse[flat // width] * width + flat % width

    return replace(
        plan,
        input_ids=plan.input_ids[order],
        positions=plan.positions[order],
        lengths=plan.lengths[order],
        prefix_rows=plan.prefix_rows[order],
        prefix_lengths=plan.prefix_lengths[order],
        score_at=moved(plan.score_at),
        dist_at=moved(plan.dist_at),
        capture_at=inverse[plan.capture_at],
    )


@dataclass(frozen=True, kw_only=True)
class PassInputs:
    """What of a pass runs through the model, as host arrays: its tokens and their true
    positions, each batch row's first position in the flattened inputs, and the flat positions
    scored and whose distribution is taken."""

    input_ids: np.ndarray
    positions: np.ndarray
    # (batch + 1,): each batch row's first flat position, then the total
    starts: np.ndarray
    score_at: np.ndarray
    dist_at: np.ndarray


def padded(plan: PassPlan) -> PassInputs:
    """The plan's own ``(batch, width)`` arrays, rows ``width`` positions apart."""
    batch, width = plan.input_ids.shape
    return PassInputs(
        input_ids=plan.input_ids,
        positions=plan.positions,
        starts=np.arange(batch + 1, dtype=np.int64) * width,
        score_at=plan.score_at,
        dist_at=plan.dist_at,
    )


def packed(plan: PassPlan) -> PassInputs:
    """The pass's real tokens as one sequence ``(1, tokens)`` (no padding token runs through
    the model), the plan's flat ``row × width + column`` positions moved to the packed ones."""
    width = plan.input_ids.shape[1]
    starts = np.r_[0, np.cumsum(plan.lengths)].astype(np.int64)
    real = np.flatnonzero((np.arange(width)[None, :] < plan.lengths[:, None]).ravel())

    def moved(flat: np.ndarray) -> np.ndarray:
        return starts[flat // width] + flat % width

    return PassInputs(
        input_ids=plan.input_ids.ravel()[real][None, :],
        positions=plan.positions.ravel()[real][None, :],
        starts=starts,
        score_at=moved(plan.score_at),
        dist_at=moved(plan.dist_at),
    )


def prefix_groups(
    plan: PassPlan, starts: np.ndarray, slots: int, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """For a pass grouped by row whose batch rows start at ``starts`` (see :class:`PassInputs`):
    each run of batch rows continuing one prefix as one sequence of the prefix half. Returns
    its first position (runs + 1 boundaries), the prefix's first slot in the flattened store
    (``stride`` positions per store row, prefixes right-aligned before ``slots``; one unread
    entry appended), its length, and the most positions of a run."""
    assert plan.prefix_rows is not None and plan.prefix_lengths is not None
    rows = plan.prefix_rows
    firsts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    bounds = starts[np.r_[firsts, rows.size]]
    lengths = plan.prefix_lengths[firsts]
    starts = np.r_[rows[firsts] * stride + slots - lengths, 0]
    return bounds, starts, lengths, int(np.diff(bounds).max())


def install(model: Any, layout: Any, device: torch.device) -> bool:
    """Give ``model`` this module's attention when it qualifies (see the module docstring)."""
    if device.type not in IN_PLACE_DEVICES or layout is None or layout.window is not None:
        return False
    config = model.config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", IMPLEMENTATION):
        return False
    if any(getattr(config, name, None) for name in ("attn_logit_softcapping", "alibi")):
        return False
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    if head_dim % 8 or head_dim > 256:  # what flash attention takes
        return False
    dtype = next(model.parameters()).dtype
    if device.type == "cuda" and (dtype not in (torch.float16, torch.bfloat16) or not _probe()):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    model.set_attn_implementation(IMPLEMENTATION)
    return True


def kernel_for(device: torch.device) -> Any:
    return varlen_flash if device.type == "cuda" else varlen_reference


_PROBED: dict[int, bool] = {}


def _probe() -> bool:
    """The flash kernel takes this module's arguments on this GPU and agrees with the reference
    (once per device)."""
    index = torch.cuda.current_device()
    if index not in _PROBED:
        _PROBED[index] = _probe_once()
    return _PROBED[index]


def _probe_once() -> bool:
    generator = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(10, 4, 64, device="cuda", generator=generator).bfloat16()
    store = torch.randn(24, 2, 64, device="cuda", generator=generator).bfloat16()
    cu_q = torch.tensor([0, 4, 10], dtype=torch.int32, device="cuda")
    starts = torch.tensor([3, 12, 0], dtype=torch.int32, device="cuda")
    used = torch.tensor([5, 9], dtype=torch.int32, device="cuda")
    try:
        got = merge(
            varlen_flash(q, store, store, cu_q, starts, 6, 9, causal=False, seqused_k=used),
            varlen_flash(q, q[:, :2], q[:, :2], cu_q, cu_q, 6, 6, causal=True),
        )
    except (RuntimeError, TypeError) as exc:
        log.warning("flash attention's variable-length kernel is not usable here (%s)", exc)
        return False
    want = merge(
        varlen_reference(q, store, store, cu_q, starts, 6, 9, causal=False, seqused_k=used),
        varlen_reference(q, q[:, :2], q[:, :2], cu_q, cu_q, 6, 6, causal=True),
    )
    error = float((got.float() - want.float()).abs().max())
    if error > 0.05:
        log.warning("flash attention's variable-length kernel disagrees (%.3g); not used", error)
        return False
    return True


__all__ = [
    "CAUSAL",
    "FAST_PLAN",
    "IMPLEMENTATION",
    "IN_PLACE_DEVICES",
    "PREFIX",
    "PassAttention",
    "PassInputs",
    "attention",
    "grouped_by_row",
    "install",
    "kernel_for",
    "merge",
    "packed",
    "padded",
    "pass_kind",
    "prefix_groups",
    "varlen_flash",
    "varlen_reference",
]

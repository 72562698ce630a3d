"""Attention of one continuation pass over cached prefixes, gathered (the scorer now) against read
in place, for one layer of the GPT-2-small shape: what the next step of the prefix-cached path
would save on a GPU, measured before it is built.

A continuation pass scores ~1,450 column documents (up to 45 new tokens each) after the prefixes
of 128 rows (up to 55 tokens each), held slot-major in a store (``passes.PrefixStore``).

1. **gathered**: each item's prefix keys/values are copied out of the store with its own
   appended (``attention.PrefixLayer.update``), then SDPA runs with the boolean mask of true
   positions (``attention.attention_masks``) under the scorer's CUDA kernels (memory-efficient
   attention: flash attention takes no mask);
2. **in place**: nothing is copied. The queries and the new keys/values are packed without
   padding. Variable-length flash attention runs twice: over each item's row prefix, read where
   the store holds it (``cu_seq_k`` at the row's first prefix slot, ``seqused_k`` its length),
   and causally over the item's own keys. The two are merged by their log-sum-exps. The prefix
   half runs with one sequence per item, and with one per row (the items of a row contiguous,
   as a planner that keeps a row's items together would lay them out).

It reports milliseconds per layer for each and the largest difference from the gathered result.
On a CPU, which has no flash kernel, the in-place variants run :func:`varlen_reference` (the
math of the same kernel), which tests the index arithmetic and the merge.

    python -m nncd_ray.bench.prefix_attention [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nncd_ray.bench.machine import milliseconds
from nncd_ray.scorers.lm.attention import FULL, AttentionLayout, PrefixLayer, attention_masks
from nncd_ray.scorers.lm.devices import attention_kernels

# one continuation pass of the GPT-2-small shape at budget 65,536 on agnews-small (the prefix
# gather of ``bench.gpu_profile``)
PASS_SHAPE = {"items": 1450, "store_rows": 128, "heads": 12, "head_dim": 64, "width": 55, "new": 45}
QUICK_SHAPE = {"items": 40, "store_rows": 6, "heads": 2, "head_dim": 16, "width": 9, "new": 7}
SDPA = AttentionLayout(implementation="sdpa", window=None, mask_types=None, layer_kinds=(FULL,))


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """The variable-length attention of flash attention's varlen forward, in plain torch.

    Sequence b's queries are ``q[cu_q[b]:cu_q[b+1]]`` and its keys ``k[cu_k[b]:]``, ``seqused_k[b]``
    of them (else ``cu_k[b+1] - cu_k[b]``); ``causal`` aligns the diagonal bottom-right. Returns
    the packed output (like ``q``) and the log-sum-exp ``(heads, queries)`` in float32.
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
    keys, values = k[at].float(), v[at].float()
    if keys.shape[2] != queries.shape[2]:  # grouped-query attention
        keys = keys.repeat_interleave(queries.shape[2] // keys.shape[2], dim=2)
        values = values.repeat_interleave(queries.shape[2] // values.shape[2], dim=2)
    scores = torch.einsum("nqhd,nkhd->nhqk", queries, keys) / queries.shape[-1] ** 0.5
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`varlen_reference` by torch's flash-attention kernel (CUDA)."""
    out, lse, *_ = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, seqused_k=seqused_k
    )
    return out, lse


def merge(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Attention over two disjoint key sets from each one's output and log-sum-exp: the output
    over their union (the weight of the first is sigmoid(lse1 - lse2))."""
    (out1, lse1), (out2, lse2) = first, second
    weight = torch.sigmoid(lse1 - lse2).t()[..., None]
    return (out1.float() * weight + out2.float() * (1.0 - weight)).to(out1.dtype)


def measure(device: str, dtype: str, *, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Milliseconds per layer of each variant and its largest difference from the gathered."""
    shape = QUICK_SHAPE if quick else PASS_SHAPE
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(seed)
    items, rows, heads, dim = shape["items"], shape["store_rows"], shape["heads"], shape["head_dim"]
    width, new = shape["width"], shape["new"]
    slots = width + 20

    def ints(low: int, high: int, size: int) -> torch.Tensor:
        return torch.randint(low, high + 1, (size,), generator=generator)

    prefix = ints(1, width, rows)
    prefix[0] = width
    lengths = ints(1, new, items)
    lengths[0] = new
    item_rows = torch.cat([torch.arange(rows), ints(0, rows - 1, items - rows)]).sort().values

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator).to(device=device, dtype=torch_dtype)

    store_k, store_v = randn(rows, slots + new, heads, dim), randn(rows, slots + new, heads, dim)
    q_pad, k_pad, v_pad = (
        randn(items, new, heads, dim),
        randn(items, new, heads, dim),
        randn(items, new, heads, dim),
    )
    prefix, lengths, item_rows = prefix.to(device), lengths.to(device), item_rows.to(device)
    valid = torch.arange(new, device=device)[None, :] < lengths[:, None]
    item_prefix = prefix[item_rows]

    # 1. gathered: the scorer's continuation pass (true-position mask, built once per pass)
    positions = item_prefix[:, None] + torch.arange(new, device=device)[None, :]
    slot = torch.arange(width, device=device)[None, :] - (width - item_prefix)[:, None]
    mask = attention_masks(
        SDPA,
        positions,
        torch.cat([slot, positions], dim=1),
        torch.cat([slot >= 0, valid], dim=1),
        torch_dtype,
    )
    assert isinstance(mask, torch.Tensor)  # one layer kind: one mask
    torch_device = torch.device(device)

    def gathered() -> torch.Tensor:
        layer = PrefixLayer(store_k, store_v, rows=item_rows, slots=slots, width=width)
        keys, values = layer.update(k_pad.transpose(1, 2), v_pad.transpose(1, 2))
        with attention_kernels(torch_device):
            return F.scaled_dot_product_attention(
                q_pad.transpose(1, 2), keys, values, attn_mask=mask
            )

    # 2. in place: packed queries and own keys; prefixes read from the store as it is
    q, k, v = q_pad[valid], k_pad[valid], v_pad[valid]
    flat_k = store_k.view(-1, heads, dim)
    flat_v = store_v.view(-1, heads, dim)
    first_slot = torch.arange(rows, device=device) * (slots + new) + slots - prefix
    cu_items = F.pad(lengths.cumsum(0), (1, 0)).int()
    per_row = torch.zeros(rows, dtype=torch.long, device=device).index_add_(0, item_rows, lengths)
    cu_rows = F.pad(per_row.cumsum(0), (1, 0)).int()
    item_starts = F.pad(first_slot[item_rows], (0, 1)).int()  # the last entry is never read
    row_starts = F.pad(first_slot, (0, 1)).int()
    kernel = varlen_flash if device.startswith("cuda") else varlen_reference
    max_row = int(per_row.max())

    def prefix_per_item() -> tuple[torch.Tensor, torch.Tensor]:
        return kernel(
            q,
            flat_k,
            flat_v,
            cu_items,
            item_starts,
            new,
            width,
            causal=False,
            seqused_k=item_prefix.int(),
        )

    def prefix_per_row() -> tuple[torch.Tensor, torch.Tensor]:
        return kernel(
            q,
            flat_k,
            flat_v,
            cu_rows,
            row_starts,
            max_row,
            width,
            causal=False,
            seqused_k=prefix.int(),
        )

    def own() -> tuple[torch.Tensor, torch.Tensor]:
        return kernel(q, k, v, cu_items, cu_items, new, new, causal=True)

    def in_place_per_item() -> torch.Tensor:
        return merge(prefix_per_item(), own())

    def in_place_per_row() -> torch.Tensor:
        return merge(prefix_per_row(), own())

    expected = gathered().transpose(1, 2)[valid].float()
    repeats = 3 if quick else 50
    results: dict[str, Any] = {**shape, "slots": slots, "dtype": dtype, "device": device}
    results["kernel"] = kernel.__name__
    results["gathered_ms"] = milliseconds(gathered, device, repeats)
    for name, variant in (
        ("in_place_per_item", in_place_per_item),
        ("in_place_per_row", in_place_per_row),
    ):
        try:
            results[f"{name}_ms"] = milliseconds(variant, device, repeats)
            difference = (variant().float() - expected).abs().max()
            results[f"{name}_max_abs_difference"] = float(difference)
        except (RuntimeError, TypeError) as exc:  # a torch without this kernel or argument
            results[f"{name}_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    for name, part in (
        ("prefix_per_item", prefix_per_item),
        ("prefix_per_row", prefix_per_row),
        ("own", own),
    ):
        try:
            results[f"{name}_ms"] = milliseconds(part, device, repeats)
        except (RuntimeError, TypeError) as exc:
            results[f"{name}_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    results["expected_abs_max"] = float(expected.abs().max())
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nncd_ray.bench.prefix_attention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--quick", action="store_true", help="tiny shapes (the smoke test)")
    parser.add_argument("--out", help="folder for prefix_attention.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "python -m nncd_ray.bench.prefix_attention: no CUDA GPU here (use --device cpu)",
            file=sys.stderr,
        )
        return 2
    results = measure(args.device, args.dtype, quick=args.quick)
    text = json.dumps(results, indent=2) + "\n"
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "prefix_attention.json").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

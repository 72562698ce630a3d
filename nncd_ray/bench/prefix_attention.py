"""Attention of one continuation pass over cached prefixes, gathered (the scorer now) against read
in place, for one layer of the GPT-2-small shape: what the next step of the prefix-cached path
would save on a GPU, measured before it is built.

A continuation pass scores ~1,450 column documents (up to 45 new tokens each) after the prefixes
of 128 rows (up to 55 tokens each), held slot-major in a store (``passes.PrefixStore``).

1. **gathered**: each item's prefix keys/values are copied out of the store with its own
   appended (``attention.PrefixLayer.update``), then SDPA runs with the boolean mask of true
   positions (``attention.attention_masks``) under the scorer's CUDA kernels (memory-efficient
   attention: flash attention takes no mask);
2. **in place**: nothing is copied. Variable-length flash attention runs twice: over each
   item's row prefix, read where the store holds it (``cu_seq_k`` at the row's first prefix
   slot, ``seqused_k`` its length), and causally over the item's own keys; the two are merged by
   their log-sum-exps. Three variants, all on packed queries (no padding): the prefix half
   one sequence per item, or one per row (a row's items adjacent, as the runner orders them),
   and the latter through the scorer's own ``fast_attention.attention`` (what a packed
   continuation pass runs).

It reports milliseconds per layer for each and the largest difference from the gathered result.
The kernels and the merge are the scorer's own (``scorers.lm.fast_attention``, which runs the
per-row variant in the scorer's continuation passes on a GPU). On a CPU, which has no flash
kernel, the in-place variants run ``varlen_reference`` (the math of the same kernel).

    python -m nncd_ray.bench.prefix_attention [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from nncd_ray.bench.machine import milliseconds
from nncd_ray.scorers.lm.attention import FULL, AttentionLayout, PrefixLayer, attention_masks
from nncd_ray.scorers.lm.devices import attention_kernels
from nncd_ray.scorers.lm.fast_attention import (
    PREFIX,
    PassAttention,
    attention,
    kernel_for,
    merge,
)

# one continuation pass of the GPT-2-small shape at budget 65,536 on agnews-small (the prefix
# gather of ``bench.gpu_profile``)
PASS_SHAPE = {"items": 1450, "store_rows": 128, "heads": 12, "head_dim": 64, "width": 55, "new": 45}
QUICK_SHAPE = {"items": 40, "store_rows": 6, "heads": 2, "head_dim": 16, "width": 9, "new": 7}
SDPA = AttentionLayout(implementation="sdpa", window=None, mask_types=None, layer_kinds=(FULL,))


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
    kernel = kernel_for(torch_device)
    item_lengths, row_lengths = item_prefix.int(), prefix.int()

    def prefix_half(
        cu_q: torch.Tensor, starts: torch.Tensor, longest: int, used: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return kernel(q, flat_k, flat_v, cu_q, starts, longest, width, causal=False, seqused_k=used)

    prefix_per_item = partial(prefix_half, cu_items, item_starts, new, item_lengths)
    prefix_per_row = partial(prefix_half, cu_rows, row_starts, int(per_row.max()), row_lengths)

    def own() -> tuple[torch.Tensor, torch.Tensor]:
        return kernel(q, k, v, cu_items, cu_items, new, new, causal=True)

    def in_place_per_item() -> torch.Tensor:
        return merge(prefix_per_item(), own())

    def in_place_per_row() -> torch.Tensor:
        return merge(prefix_per_row(), own())

    # the scorer's packed continuation pass (fast_attention.attention): one own-keys sequence
    # per item, one prefix-half sequence per row (items grouped by row, as the runner orders them)
    scorer_pass = PassAttention(
        kind=PREFIX,
        kernel=kernel,
        starts=cu_items,
        longest=new,
        store=[(store_k, store_v)],
        prefix_queries=cu_rows,
        prefix_starts=row_starts,
        prefix_lengths=row_lengths,
        longest_group=int(per_row.max()),
        width=width,
    )
    layer = SimpleNamespace(layer_idx=0)

    def in_place_scorer() -> torch.Tensor:
        query, key, value = (x[None].transpose(1, 2) for x in (q, k, v))  # (1, heads, T, dim)
        return attention(layer, query, key, value, None, nncd_pass=scorer_pass)[0][0]

    expected = gathered().transpose(1, 2)[valid].float()
    repeats = 3 if quick else 50
    results: dict[str, Any] = {**shape, "slots": slots, "dtype": dtype, "device": device}
    results["kernel"] = kernel.__name__
    results["gathered_ms"] = milliseconds(gathered, device, repeats)
    for name, variant in (
        ("in_place_scorer", in_place_scorer),
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

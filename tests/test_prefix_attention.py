"""``bench.prefix_attention``: the in-place prefix attention it times gives the gathered result.

On a CPU the in-place variants run ``varlen_reference`` (flash attention's variable-length math),
so these check the index arithmetic (store offsets, per-item and per-row sequences) and the
log-sum-exp merge that a GPU run relies on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from nncd_ray.bench.prefix_attention import main, measure
from nncd_ray.scorers.lm.fast_attention import merge, varlen_reference


def test_in_place_prefix_attention_equals_the_gathered_one() -> None:
    results = measure("cpu", "fp32", quick=True)
    assert results["kernel"] == "varlen_reference"
    assert results["expected_abs_max"] > 0.1  # the comparison is not of zeros
    for variant in ("in_place_scorer", "in_place_per_item", "in_place_per_row"):
        assert results[f"{variant}_max_abs_difference"] < 1e-5, results
    for part in ("gathered", "prefix_per_item", "prefix_per_row", "own"):
        assert results[f"{part}_ms"] > 0


def test_varlen_reference_is_sdpa_per_sequence_and_the_merge_joins_key_sets() -> None:
    torch.manual_seed(0)
    heads, dim = 2, 8
    lens_q, lens_k = [3, 5], [4, 6]  # keys outnumber queries: the causal diagonal is bottom-right
    q = torch.randn(sum(lens_q), heads, dim)
    k, v = torch.randn(sum(lens_k), heads, dim), torch.randn(sum(lens_k), heads, dim)
    cu_q = torch.tensor([0, 3, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 10], dtype=torch.int32)
    out, lse = varlen_reference(q, k, v, cu_q, cu_k, 5, 6, causal=True)
    assert out.shape == q.shape and lse.shape == (heads, sum(lens_q))
    for b in range(2):
        qs = q[cu_q[b] : cu_q[b + 1]].transpose(0, 1)
        ks, vs = (x[cu_k[b] : cu_k[b + 1]].transpose(0, 1) for x in (k, v))
        visible = torch.ones(lens_q[b], lens_k[b]).tril(lens_k[b] - lens_q[b]).bool()
        want = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=visible).transpose(0, 1)
        assert torch.allclose(out[cu_q[b] : cu_q[b + 1]], want, atol=1e-5)
    # keys split in two (first two of each sequence, the rest): merged = attention over all
    first = varlen_reference(
        q, k, v, cu_q, cu_k, 5, 6, causal=False, seqused_k=torch.tensor([2, 2])
    )
    rest_starts = torch.tensor([2, 6, 10], dtype=torch.int32)
    rest = varlen_reference(
        q, k, v, cu_q, rest_starts, 5, 4, causal=False, seqused_k=torch.tensor([2, 4])
    )
    whole, _ = varlen_reference(q, k, v, cu_q, cu_k, 5, 6, causal=False)
    assert torch.allclose(merge(first, rest), whole, atol=1e-5)
    assert not torch.allclose(first[0], whole, atol=1e-3)  # neither half alone is the answer


def test_prefix_attention_cli_writes_json(tmp_path: Path) -> None:
    assert main(["--device", "cpu", "--dtype", "fp32", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "prefix_attention.json").read_text())
    assert results["in_place_per_row_max_abs_difference"] < 1e-5

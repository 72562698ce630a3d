"""The batch planner's cost model: the cheapest of several item orders, and weights derived from
the model's shape on a GPU (pure planning: no model runs, meta-device models for the shapes)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from paths import AGNEWS_CSV, needs_agnews

from nncd_ray.bench.gpu import SHAPES
from nncd_ray.data.protocols import load_protocol
from nncd_ray.scorers.lm import LMScorer
from nncd_ray.scorers.lm import batching as lm_batching
from nncd_ray.scorers.lm import budget as lm_budget
from nncd_ray.scorers.lm.budget import pass_cost
from nncd_ray.scorers.lm.loading import embedded_model_dir
from nncd_ray.scorers.lm.plan import (
    DEFAULT_COST,
    Documents,
    PassCost,
    Pieces,
    batch_order,
    continuation_passes,
    document_passes,
)
from nncd_ray.scorers.lm.tile import plan_tile
from nncd_ray.testing.tiny_models import meta_model

AGNEWS = AGNEWS_CSV
CUDA = torch.device("cuda")  # a device name only: nothing here runs on it


def shape(name: str, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """The benchmark's GPT-2-small and Llama-1.2B shapes (PROTOCOL.md), weights on meta."""
    model: torch.nn.Module = meta_model(**SHAPES[name], vocab=50257, dtype=dtype)
    return model


def plan_cost(
    widths: np.ndarray, prefixes: np.ndarray, passes: list[np.ndarray], cost: PassCost, budget: int
) -> float:
    """What ``cost`` says the passes cost (the quantity batch_order minimises)."""
    total = 0.0
    for chosen in passes:
        width, prefix = float(widths[chosen].max()), float(prefixes[chosen].max())
        total += len(chosen) * float(cost.per_item(np.array(width), np.array(prefix)))
        total += cost.per_pass(budget)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cost", [DEFAULT_COST, PassCost(prefix_slot=0.01, overhead_tokens=300)])
def test_the_cheapest_order_is_kept(
    seed: int, cost: PassCost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every item in exactly one pass within the budgets, and the plan costs no more than the
    plan of any single order it was chosen from."""
    rng = np.random.default_rng(seed)
    widths = rng.integers(5, 120, 3000)
    prefixes = rng.integers(4, 200, 3000)
    budget = 16384
    passes = batch_order(widths, prefixes, budget, cost=cost)
    assert sorted(int(i) for p in passes for i in p) == list(range(len(widths)))
    for chosen in passes:
        assert len(chosen) == 1 or len(chosen) * widths[chosen].max() <= budget
        slots = lm_batching.PREFIX_SLOTS_PER_TOKEN * budget
        assert len(chosen) == 1 or len(chosen) * prefixes[chosen].max() <= slots
    kept = plan_cost(widths, prefixes, passes, cost, budget)
    singles = []
    for step in lm_batching.WIDTH_BUCKETS:
        monkeypatch.setattr(lm_batching, "WIDTH_BUCKETS", (step,))
        single = batch_order(widths, prefixes, budget, cost=cost)
        singles.append(plan_cost(widths, prefixes, single, cost, budget))
    assert kept == pytest.approx(min(singles))
    assert kept < max(singles)  # the orders differ, so choosing among them means something


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_passes_are_filled_with_real_tokens(seed: int) -> None:
    """Packed passes (fast_attention runs them without padding) hold at most the budget in real
    tokens, so they are fuller and fewer than padded ones."""
    rng = np.random.default_rng(seed)
    widths = rng.integers(5, 120, 3000)
    prefixes = rng.integers(4, 200, 3000)
    budget = 16384
    packed_cost = replace(DEFAULT_COST, packed=True)
    passes = batch_order(widths, prefixes, budget, cost=packed_cost)
    assert sorted(int(i) for p in passes for i in p) == list(range(len(widths)))
    for chosen in passes:
        assert widths[chosen].sum() <= budget
        assert len(chosen) * widths[chosen].max() <= lm_batching.PACKED_HOST_BUDGETS * budget
    # cut points every 3 items here (3,000 items, at most MAX_CUTS segments): a pass falls
    # short of the budget by less than one segment
    assert len(passes) <= -(-widths.sum() // (budget - 3 * int(widths.max())))
    assert len(passes) < len(batch_order(widths, prefixes, budget, cost=DEFAULT_COST))


def test_packed_passes_bound_their_padded_host_arrays() -> None:
    """Thousands of one-token items and one wide item fit one packed pass in real tokens, but
    not in host arrays padded to the widest: the wide item goes with few of them."""
    widths = np.array([1] * 6000 + [2000])
    budget = 16384
    passes = batch_order(widths, None, budget, cost=replace(DEFAULT_COST, packed=True))
    assert len(passes) == 2
    for chosen in passes:
        assert len(chosen) * widths[chosen].max() <= lm_batching.PACKED_HOST_BUDGETS * budget


def test_gpu_cost_follows_the_model_shape() -> None:
    gpt2, llama = pass_cost(shape("gpt2-small"), CUDA), pass_cost(shape("llama-1.2b"), CUDA)
    # a GPT-2-small prefix slot (12 heads of 64, bf16) weighs about what the planner gave every
    # model before it knew their shapes; grouped-query Llama's (8 KV heads of 64 against a
    # 2,048-wide body) a tenth of that
    assert 0.1 < gpt2.prefix_slot < 0.16
    assert llama.prefix_slot < gpt2.prefix_slot / 8
    # one query on one key against a token's projections and MLP: 4 × 768 / (2 × 7.1 M)
    assert gpt2.attention == pytest.approx(4 * 768 / (2 * 12 * 768**2), rel=0.02)
    # a pass's fixed cost is worth fewer tokens of a bigger model, within the planner's range
    assert gpt2.overhead_tokens is not None and llama.overhead_tokens is not None
    assert llama.overhead_tokens < gpt2.overhead_tokens
    assert llama.per_pass(65536) == 65536 * lm_batching.PASS_OVERHEAD_RANGE[0]
    # float32 on a GPU: a sixth of the arithmetic rate, twice the bytes per slot
    fp32 = pass_cost(shape("gpt2-small", torch.float32), CUDA)
    assert fp32.overhead_tokens == pytest.approx(gpt2.overhead_tokens / 6)
    assert fp32.prefix_slot == pytest.approx(gpt2.prefix_slot * 2 / 6)
    # bench.gpu_profile calibrates the fixed cost of a pass by setting it
    from nncd_ray.bench.gpu_profile import pass_seconds

    with pass_seconds(0.002):
        cheaper = pass_cost(shape("gpt2-small"), CUDA)
    assert cheaper.overhead_tokens == pytest.approx(gpt2.overhead_tokens / 4)
    with pass_seconds("shape-blind"):
        assert lm_budget.pass_cost(shape("gpt2-small"), CUDA) == DEFAULT_COST
    assert pass_cost(shape("gpt2-small"), CUDA) == gpt2
    assert lm_budget.pass_cost(shape("gpt2-small"), CUDA) == gpt2
    # on a CPU the planner keeps the weights measured there
    assert pass_cost(shape("llama-1.2b"), torch.device("cpu")) == DEFAULT_COST


@needs_agnews
def test_the_gpu_cost_model_cuts_continuation_padding() -> None:
    """A 128-row agnews-small tile planned for the Llama-1.2B shape on a GPU at the bf16 budget:
    fewer padded input tokens and a lower modelled cost than the planner's shape-blind
    weights with a single order (the planner of the H200 run at 3d26b8b)."""
    split = load_protocol("agnews-small", str(AGNEWS))
    scorer = LMScorer(str(embedded_model_dir()), device="cpu")
    rows = scorer.encode(list(split.queries.texts[:128]))
    cols = scorer.encode(list(split.refs.texts))
    cost = pass_cost(shape("llama-1.2b"), CUDA)

    def planned(with_cost: PassCost) -> tuple[int, int, float]:
        tile = plan_tile(
            rows, cols, bos=1, eos=2, pad=0, path="prefix-cached", budget=65536,
            want_cols=True, prefix_capacity=1 << 30, cost=with_cost,
        )  # fmt: skip
        plans = [p for g in tile.groups for p in g.documents + g.continuations]
        padded = sum(p.padded_tokens for p in plans)
        real = sum(p.real_tokens for p in plans)
        modelled = sum(
            p.batch * float(cost.per_item(np.array(p.input_ids.shape[1]), np.array(p.prefix_width)))
            + cost.per_pass(65536)
            for p in plans
        )
        return padded, real, modelled

    old = lm_batching.WIDTH_BUCKETS
    try:
        lm_batching.WIDTH_BUCKETS = (0.125,)
        before = planned(DEFAULT_COST)
    finally:
        lm_batching.WIDTH_BUCKETS = old
    after = planned(cost)
    assert after[1] == before[1]  # the same tokens
    assert after[0] / after[1] < 1.03 < before[0] / before[1]
    assert after[2] < 0.98 * before[2]


def test_pass_arrays_are_filled_from_pieces() -> None:
    """A naive pair ``[b] x [e] y [e]`` (head and tail pieces) and a row prefix ``[b] x [e]``
    in one pass; then two continuations of the row: ids, positions and what is scored where."""
    pieces = Pieces([(1, 5, 6, 2), (7, 2)])
    docs = Documents.of(pieces, np.array([0]), np.array([9]), tail=np.array([1])) + Documents.of(
        pieces, np.array([0]), np.array([4]), prefix_row=np.array([0]), tile_row=np.array([3])
    )
    (plan,) = document_passes(docs, pad=0, budget=1000)
    # sorted by width: the prefix (4 tokens) first, then the pair (6)
    assert plan.input_ids.tolist() == [[1, 5, 6, 2, 0, 0], [1, 5, 6, 2, 7, 2]]
    assert plan.lengths.tolist() == [4, 6]
    assert plan.score_at.tolist() == [0, 1, 2, 6, 7, 8, 9, 10]
    assert plan.score_targets.tolist() == [5, 6, 2, 5, 6, 2, 7, 2]
    assert plan.score_into.tolist() == [4, 4, 4, 9, 9, 9, 9, 9]
    assert (plan.dist_at.tolist(), plan.dist_rows.tolist()) == ([3], [3])
    assert (plan.capture_at.tolist(), plan.capture_rows.tolist()) == ([0], [0])

    columns = Pieces([(8,), (), (3, 4, 5)])
    (cont,) = continuation_passes(
        rows=np.array([0, 0]),
        columns=columns,
        column_of=np.array([2, 0]),
        into=np.array([11, 12]),
        prefix_lengths=np.array([4]),
        final=2,
        pad=0,
        budget=1000,
    )
    assert cont.input_ids.tolist() == [[8, 0, 0], [3, 4, 5]]
    assert cont.positions.tolist() == [[4, 5, 6], [4, 5, 6]]
    assert cont.score_at.tolist() == [0, 3, 4, 5]
    assert cont.score_targets.tolist() == [2, 4, 5, 2]
    assert cont.score_into.tolist() == [12, 11, 11, 11]
    assert (cont.prefix_rows.tolist(), cont.prefix_width) == ([0, 0], 4)

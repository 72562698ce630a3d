"""``scorers.lm.fast_attention``: the scorer's passes with variable-length attention that reads
cached prefixes in place (flash attention on a GPU). Here the CPU runs the kernel's reference
(``varlen_reference``, added to ``IN_PLACE_DEVICES``), so these check everything but the CUDA
kernel itself: which passes qualify, the store offsets, the merge, and equal code lengths on
both paths; ``tests/test_lm_gpu.py`` checks the kernel on CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lm_samples import COLS, ROWS

from nncd_ray.scorers.lm import LMScorer
from nncd_ray.scorers.lm import fast_attention as fa
from nncd_ray.testing.tiny_models import build_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tokenizer = build_tiny_model(tmp_path_factory.mktemp("tokenizer"), vocab_size=300)
    built = {}
    for arch in ("gpt2", "llama", "qwen3", "gpt_neox", "mistral", "gemma2"):
        built[arch] = build_tiny_model(
            tmp_path_factory.mktemp(arch),
            arch=arch,  # type: ignore[arg-type]
            n_layer=2,
            tokenizer_dir=tokenizer,
            sliding_window=8 if arch in ("mistral", "gemma2") else None,
            seed=3,
        )
    return built


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen3", "gpt_neox"])  # qwen3: masks by type
@pytest.mark.parametrize("prefix_cache", [True, False], ids=["prefix-cached", "naive"])
@pytest.mark.parametrize("budget", [64, 4096])
def test_in_place_attention_gives_the_masked_paths_code_lengths(
    models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    arch: str,
    prefix_cache: bool,
    budget: int,
) -> None:
    model = str(models[arch])
    masked = LMScorer(model, device="cpu", dtype="fp32", prefix_cache=prefix_cache)
    masked.token_budget = budget
    monkeypatch.setattr(fa, "IN_PLACE_DEVICES", ("cuda", "cpu"))
    merges = []
    merge = fa.merge

    def counting_merge(*args: Any) -> Any:
        merges.append(1)
        return merge(*args)

    monkeypatch.setattr(fa, "merge", counting_merge)
    fast = LMScorer(model, device="cpu", dtype="fp32", prefix_cache=prefix_cache)
    fast.token_budget = budget
    assert fast._masked is not None and fast._masked.fast and not masked._masked.fast  # type: ignore[union-attr]
    assert fast.path == ("prefix-cached" if prefix_cache else "naive")
    merges.clear()
    expected, got = masked.score_tile(ROWS, COLS), fast.score_tile(ROWS, COLS)
    for field in ("row_bits", "col_bits", "pair_bits"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), atol=1e-4)
    assert masked.counters.fast_passes == 0
    # every pass of these tiles has one of the two structures
    assert fast.counters.fast_passes == fast.counters.forward_passes > 0
    # packed: no padding token ran through the model
    assert fast.counters.padded_tokens == fast.counters.model_tokens
    assert masked.counters.padded_tokens > masked.counters.model_tokens
    assert bool(merges) == prefix_cache  # continuation passes read prefixes in place


@pytest.mark.parametrize("arch", ["mistral", "gemma2"])  # sliding window; gemma2 soft-caps too
def test_models_it_cannot_run_keep_the_masked_path(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, arch: str
) -> None:
    monkeypatch.setattr(fa, "IN_PLACE_DEVICES", ("cuda", "cpu"))
    scorer = LMScorer(str(models[arch]), device="cpu", dtype="fp32")
    assert scorer._masked is not None and not scorer._masked.fast
    scorer.score_tile(ROWS, COLS)
    assert scorer.counters.fast_passes == 0


def test_not_on_a_cpu_by_default(models: dict[str, Path]) -> None:
    scorer = LMScorer(str(models["gpt2"]), device="cpu", dtype="fp32")
    assert scorer._masked is not None and not scorer._masked.fast
    assert "attention" not in scorer.fingerprint().get("batch_plan", {})


def test_pass_kind_reads_the_structure_of_true_positions() -> None:
    lengths = np.array([3, 1])
    causal = np.array([[0, 1, 2], [0, 9, 9]])  # padding after each sequence is never read
    assert fa.pass_kind(causal, lengths, None) == fa.CAUSAL
    assert fa.pass_kind(causal + 2, lengths, None) is None  # not from position 0
    prefix = np.array([4, 2])
    assert fa.pass_kind(causal + prefix[:, None], lengths, prefix) == fa.PREFIX
    assert fa.pass_kind(causal + 4, lengths, prefix) is None  # row 2 not after its prefix
    packed = np.array([[0, 1, 0], [0, 9, 9]])  # two sequences in one row
    assert fa.pass_kind(packed, lengths, None) is None
    assert fa.pass_kind(causal, lengths, np.array([0, 0])) is None  # no prefix to read


def test_keys_past_a_sequences_length_are_never_read() -> None:
    """A store's room after a prefix is unwritten memory (NaN possible): the reference, like
    flash attention, reads only ``seqused_k`` keys."""
    import torch

    torch.manual_seed(1)
    q, k, v = torch.randn(4, 2, 8), torch.randn(10, 2, 8), torch.randn(10, 2, 8)
    args = (torch.tensor([0, 4]), torch.tensor([1, 0]), 4, 6)
    clean, _ = fa.varlen_reference(q, k, v, *args, causal=False, seqused_k=torch.tensor([4]))
    k[5:], v[5:] = float("nan"), float("nan")
    dirty, lse = fa.varlen_reference(q, k, v, *args, causal=False, seqused_k=torch.tensor([4]))
    assert torch.equal(clean, dirty) and torch.isfinite(lse).all()


def test_the_half_precision_merge_is_the_float32_one_rounded() -> None:
    import torch

    torch.manual_seed(2)
    outs = [torch.randn(50, 4, 16) for _ in range(2)]
    lses = [torch.randn(4, 50) * 3 for _ in range(2)]
    exact = fa.merge((outs[0], lses[0]), (outs[1], lses[1]))
    weight = torch.sigmoid(lses[0] - lses[1]).t()[..., None]
    assert torch.allclose(exact, weight * outs[0] + (1 - weight) * outs[1], atol=1e-6)
    half = fa.merge((outs[0].bfloat16(), lses[0]), (outs[1].bfloat16(), lses[1]))
    assert half.dtype == torch.bfloat16
    # bf16 inputs, weight and output: within a few bf16 steps of the float32 merge
    assert float((half.float() - exact).abs().max()) < 0.05
    assert float((half.float() - exact).abs().mean()) < 0.005


def test_a_pass_grouped_by_row_and_packed_moves_its_positions_with_its_rows() -> None:
    from nncd_ray.scorers.lm.plan import PassPlan

    ids = np.array([[10, 11, 0], [20, 0, 0], [30, 31, 32]])
    plan = PassPlan(
        input_ids=ids,
        positions=np.array([[5, 6, 7], [2, 3, 4], [5, 6, 7]]),
        lengths=np.array([2, 1, 3]),
        prefix_rows=np.array([4, 1, 4]),
        prefix_lengths=np.array([5, 2, 5]),
        prefix_width=5,
        score_at=np.array([0, 3, 6, 8]),  # rows 0, 1, 2, 2
        score_targets=np.array([11, 0, 31, 0]),
        score_into=np.array([0, 1, 2, 3]),
        dist_at=np.array([3]),  # row 1
        dist_rows=np.array([0]),
        capture_at=np.array([2]),
        capture_rows=np.array([0]),
    )
    grouped = fa.grouped_by_row(plan)
    assert grouped.prefix_rows.tolist() == [1, 4, 4]  # stable: row 0 before row 2
    assert grouped.input_ids.tolist() == [[20, 0, 0], [10, 11, 0], [30, 31, 32]]
    flat = grouped.input_ids.ravel()
    # every scored position still holds the token it held
    assert flat[grouped.score_at].tolist() == ids.ravel()[plan.score_at].tolist()
    assert flat[grouped.dist_at].tolist() == [20] and grouped.capture_at.tolist() == [2]
    pack = fa.packed(grouped)  # the real tokens as one sequence
    assert pack.input_ids.tolist() == [[20, 10, 11, 30, 31, 32]]
    assert pack.positions.tolist() == [[2, 5, 6, 5, 6, 7]]
    assert pack.starts.tolist() == [0, 1, 3, 6]
    packed_flat = pack.input_ids.ravel()
    assert packed_flat[pack.score_at].tolist() == ids.ravel()[plan.score_at].tolist()
    assert packed_flat[pack.dist_at].tolist() == [20]
    bounds, starts, lengths, longest = fa.prefix_groups(grouped, pack.starts, slots=8, stride=10)
    assert bounds.tolist() == [0, 1, 6] and longest == 5  # rows [0], [1, 2]: 1 and 5 tokens
    assert lengths.tolist() == [2, 5]
    assert starts.tolist() == [1 * 10 + 8 - 2, 4 * 10 + 8 - 5, 0]
    assert fa.grouped_by_row(grouped) is grouped  # already in order

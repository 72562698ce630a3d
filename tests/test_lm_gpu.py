"""The LM scorer on a CUDA GPU (``pytest -m gpu``; each test skips itself without CUDA).

What they show, on tiny random models of every family built locally:
- CUDA float32 equals CPU float32 within 1e-3 bits (every family, both paths);
- CUDA bf16 (weights; logits and log-softmax in float32) within 0.5% of CPU float32;
- a tile's passes never synchronise with the host (CUDA's sync debug mode set to "error");
- a tile's attention runs in the kernels the scorer allows, never cuDNN's (a plan per shape);
- in bf16, full-attention models run every pass in flash attention's variable-length kernel,
  prefixes read in place (``fast_attention``), with the masked passes' code lengths;
- a real out-of-memory error halves the token budget and the tile still equals the CPU's;
- cross-row batches equal one item per pass on CUDA;
- a Ray actor pinned to the GPU computes a store equal to the CPU's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_samples import COLS, ROWS

from nncd_ray.scorers.lm import LMScorer
from nncd_ray.testing.tiny_models import ARCHITECTURES, build_tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# stated tolerance of bf16 weights (float32 logits) against float32, relative to C(xy)
BF16_RELATIVE = 5e-3


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tokenizer = build_tiny_model(tmp_path_factory.mktemp("tokenizer"), vocab_size=400)
    return {
        arch: build_tiny_model(
            tmp_path_factory.mktemp(arch),
            arch=arch,  # type: ignore[arg-type]
            n_layer=4 if arch in ("gemma2", "gemma3") else 2,
            n_positions=512,
            tokenizer_dir=tokenizer,
            sliding_window=48 if arch in ("mistral", "phi3", "gemma2", "gemma3") else None,
            seed=5,
        )
        for arch in ARCHITECTURES
    }


@pytest.fixture(autouse=True)
def no_sync_debug() -> Iterator[None]:
    yield
    torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("prefix_cache", [True, False], ids=["prefix-cached", "naive"])
def test_cuda_fp32_equals_cpu_fp32(models: dict[str, Path], arch: str, prefix_cache: bool) -> None:
    cpu = LMScorer(str(models[arch]), device="cpu", dtype="fp32", prefix_cache=prefix_cache)
    gpu = LMScorer(str(models[arch]), device="cuda", dtype="fp32", prefix_cache=prefix_cache)
    assert gpu.path == cpu.path
    on_cpu, on_gpu = cpu.score_tile(ROWS, COLS), gpu.score_tile(ROWS, COLS)
    np.testing.assert_allclose(on_gpu.pair_bits, on_cpu.pair_bits, atol=1e-3, rtol=0)
    np.testing.assert_allclose(on_gpu.row_bits, on_cpu.row_bits, atol=1e-3, rtol=0)
    np.testing.assert_allclose(on_gpu.col_bits, on_cpu.col_bits, atol=1e-3, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cuda_bf16_close_to_cpu_fp32(models: dict[str, Path], arch: str) -> None:
    cpu = LMScorer(str(models[arch]), device="cpu", dtype="fp32")
    gpu = LMScorer(str(models[arch]), device="cuda", dtype="bf16")
    assert gpu.fingerprint()["batch_plan"]["device"].startswith("cuda:")
    assert gpu.fingerprint()["batch_plan"]["attention_kernels"] == [
        "FLASH_ATTENTION",
        "EFFICIENT_ATTENTION",
        "MATH",
    ]
    reference, half = cpu.score_tile(ROWS, COLS).pair_bits, gpu.score_tile(ROWS, COLS).pair_bits
    assert float(np.max(np.abs(half - reference) / reference)) <= BF16_RELATIVE


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2", "mistral"])
def test_no_host_sync_inside_a_tile(models: dict[str, Path], arch: str) -> None:
    scorer = LMScorer(str(models[arch]), device="cuda", dtype="bf16")
    scorer.score_tile(ROWS, COLS)  # first-use allocations, cuBLAS handles
    prepared = scorer.prepare(ROWS, COLS)
    torch.cuda.set_sync_debug_mode("error")
    pending = scorer.launch(prepared)  # every pass of the tile, and the copy back, queued
    torch.cuda.set_sync_debug_mode(0)
    tile = pending.result()
    assert scorer.counters.forward_passes > 2 and np.isfinite(tile.pair_bits).all()


@pytest.mark.parametrize("prefix_cache", [True, False], ids=["prefix-cached", "naive"])
def test_attention_runs_in_the_allowed_kernels(models: dict[str, Path], prefix_cache: bool) -> None:
    from torch.profiler import ProfilerActivity, profile

    scorer = LMScorer(str(models["llama"]), device="cuda", dtype="bf16", prefix_cache=prefix_cache)
    scorer.score_tile(ROWS[:1], COLS[:2])
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        scorer.score_tile(ROWS, COLS)
    names = [event.key.lower() for event in trace.key_averages()]
    assert not [name for name in names if "cudnn" in name]
    assert [name for name in names if re.search(r"fmha|flash|mem_eff|attention", name)]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen3", "gpt_neox"])
@pytest.mark.parametrize("prefix_cache", [True, False], ids=["prefix-cached", "naive"])
def test_flash_varlen_passes_equal_the_masked_ones_on_cuda(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, arch: str, prefix_cache: bool
) -> None:
    from nncd_ray.scorers.lm import fast_attention

    fast = LMScorer(str(models[arch]), device="cuda", dtype="bf16", prefix_cache=prefix_cache)
    assert fast._masked is not None and fast._masked.fast
    assert "attention" in fast.fingerprint()["batch_plan"]
    got = fast.score_tile(ROWS, COLS)  # (test_no_host_sync_inside_a_tile runs this path too)
    assert fast.counters.fast_passes == fast.counters.forward_passes > 0
    assert fast.counters.padded_tokens == fast.counters.model_tokens  # packed: no padding ran
    monkeypatch.setattr(fast_attention, "IN_PLACE_DEVICES", ())
    masked = LMScorer(str(models[arch]), device="cuda", dtype="bf16", prefix_cache=prefix_cache)
    assert masked._masked is not None and not masked._masked.fast
    expected = masked.score_tile(ROWS, COLS)
    for field in ("row_bits", "pair_bits"):
        want, have = getattr(expected, field), getattr(got, field)
        assert float(np.max(np.abs(have - want) / want)) <= BF16_RELATIVE, field


def test_real_out_of_memory_halves_the_budget(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path, arch="llama", n_embd=256, n_head=4, n_positions=1024)
    texts = [" ".join(f"word{i * j % 97}" for j in range(120)) for i in range(24)]
    reference = LMScorer(str(path), device="cpu", dtype="fp32").score_tile(texts, texts)
    scorer = LMScorer(str(path), device="cuda", dtype="fp32", token_budget=1 << 20)
    _, total = torch.cuda.mem_get_info()
    torch.cuda.set_per_process_memory_fraction(
        (torch.cuda.memory_allocated() + (512 << 20)) / total
    )
    try:
        tile = scorer.score_tile(texts, texts)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert scorer.counters.oom_backoffs >= 1 and scorer.token_budget < 1 << 20
    np.testing.assert_allclose(tile.pair_bits, reference.pair_bits, atol=1e-3, rtol=0)


def test_cross_row_batches_equal_one_item_per_pass_on_cuda(models: dict[str, Path]) -> None:
    batched = LMScorer(str(models["llama"]), device="cuda", dtype="fp32")
    single = LMScorer(str(models["llama"]), device="cuda", dtype="fp32", token_budget=1)
    np.testing.assert_allclose(
        batched.score_tile(ROWS, COLS).pair_bits,
        single.score_tile(ROWS, COLS).pair_bits,
        atol=1e-4,
        rtol=0,
    )
    assert batched.counters.forward_passes < single.counters.forward_passes


def test_ray_actor_pinned_to_the_gpu_computes_a_store(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from nncd_ray import MatrixConfig, compute_matrix
    from nncd_ray.data.corpus import Corpus
    from nncd_ray.matrix.store.matrix_store import MatrixStore
    from nncd_ray.scorers import ScorerSpec

    rows = Corpus.from_texts([f"{t} ({i})" for i, t in enumerate(ROWS * 3)])
    cols = Corpus.from_texts([f"{t} ({i})" for i, t in enumerate(COLS * 2)])
    # bf16: the fingerprint then names the device the actor scored on
    spec = ScorerSpec(name="lm", options={"model": str(models["llama"]), "dtype": "bf16"})
    summary = compute_matrix(
        MatrixConfig(store=str(tmp_path / "m.zarr"), scorer=spec, tile=4, actors=1, progress=False),
        rows,
        cols,
    )
    assert summary.tiles_computed == summary.tiles_total
    store = MatrixStore.open(str(tmp_path / "m.zarr"))
    assert store.attrs["config"]["compressor"]["batch_plan"]["device"].startswith("cuda:")
    expected = LMScorer(str(models["llama"]), device="cpu").pair_bits(rows.texts, cols.texts)
    stored = store.array("pair_bits")[:]
    assert float(np.max(np.abs(stored - expected) / expected)) <= BF16_RELATIVE

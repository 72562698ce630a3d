"""Smoke test of ``python -m nncd_ray.bench.gpu``: every step with tiny shapes on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

from paths import SHARED_DATA, needs_agnews, needs_books

from nncd_ray.bench.gpu import main
from nncd_ray.scorers.lm.plan import PLAN_VERSION


@needs_agnews
@needs_books
def test_gpu_bench_quick_on_cpu(tmp_path: Path) -> None:
    code = main(
        [
            "--data",
            str(SHARED_DATA / "agnews" / "test.csv"),
            "--device",
            "cpu",
            "--dtype",
            "fp32",
            "--quick",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert results["planner"] == PLAN_VERSION
    for model in ("gpt2-small", "llama-1.2b"):
        figures = results["models"][model]
        assert figures["prefix_cached"]["path"] == "prefix-cached"
        assert figures["naive"]["path"] == "naive"
        assert figures["prefix_cached"]["pairs"] == figures["naive"]["pairs"] == 4 * 100
        # float32: the two paths give the same code lengths
        assert figures["max_abs_difference_bits"] < 1e-3
        for path in ("prefix_cached", "naive"):
            # --quick times once, after an untimed first tile
            assert len(figures[path]["runs_pairs_per_second"]) == 1
            assert figures[path]["warmup_seconds"] > 0
    assert results["end_to_end"]["pairs"] == 4 * 100
    assert results["embedded"]["max_abs_difference_vs_cpu_bits"] == 0.0
    table = (tmp_path / "gpu.md").read_text()
    assert "| gpt2-small | prefix-cached |" in table and "End to end" in table


@needs_agnews
@needs_books
def test_gpu_profile_quick_on_cpu(tmp_path: Path) -> None:
    from nncd_ray.bench.gpu_profile import family
    from nncd_ray.bench.gpu_profile import main as profile_main

    args = ["--data", str(SHARED_DATA / "agnews" / "test.csv"), "--device", "cpu"]
    args += ["--dtype", "fp32", "--quick", "--rows", "2", "--budgets", "8192"]
    args += ["--pass-seconds", "0.002,shape-blind"]
    assert profile_main([*args, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_profile.json").read_text())
    figures = results["budgets"]["8192"]
    assert figures["prefix_cached"]["pairs"] == figures["naive"]["pairs"] == 2 * 16
    assert figures["prefix_cached"]["device_seconds"] > 0
    assert results["pass_seconds"]["0.002"]["prefix_cached"]["pairs"] == 2 * 16
    assert results["pass_seconds"]["shape-blind"]["naive"]["pairs"] == 2 * 16
    assert results["gather"]["head_major_ms"] > 0 and results["gather"]["slot_major_ms"] > 0
    assert [(r["vocab"], r["columns"]) for r in results["head"]][:2] == [
        (50257, 50257),
        (50257, 50304),
    ]
    assert all(r["matmul_ms"] > 0 and r["with_cross_entropy_ms"] > 0 for r in results["head"])
    for path in ("prefix_cached", "naive"):
        shares = results["profile"][path]["families"]
        assert abs(sum(v["share"] for v in shares.values()) - 1.0) < 1e-9
    assert family("ampere_bf16_s16816gemm_bf16_128x128") == "matmul"
    assert family("fmha_cutlassF_bf16_aligned_64x64_rf_sm80") == "attention"
    assert family("void at::native::index_elementwise_kernel") == "gather / copy"
    assert family("void at::native::vectorized_layer_norm_kernel").startswith("other")


@needs_agnews
@needs_books
def test_gpu_plans_quick_on_cpu(tmp_path: Path) -> None:
    """The plans a GPU would run, counted on the CPU: packed passes run exactly the real tokens
    and are no more than the padded ones, which run at least the real tokens."""
    from nncd_ray.bench.gpu_plans import main as plans_main

    args = ["--data", str(SHARED_DATA / "agnews" / "test.csv"), "--quick", "--budget", "256"]
    assert plans_main([*args, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu-plans.json").read_text())
    for model in ("gpt2-small", "llama-1.2b"):
        paths = results["models"][model]
        assert set(paths) == {"prefix-cached", "naive"}
        # the same documents: the naive path runs every pair's row document again
        assert (
            paths["naive"]["packed"]["model_tokens"]
            > paths["prefix-cached"]["packed"]["model_tokens"]
        )
        for layouts in paths.values():
            padded, packed = layouts["padded"], layouts["packed"]
            assert packed["model_tokens"] == padded["model_tokens"] == packed["tokens_run"]
            assert padded["tokens_run"] > padded["model_tokens"]
            assert packed["forward_passes"] <= padded["forward_passes"]

"""Smoke tests of the benchmark modules: each ``python -m nncd_ray.bench.<name>`` runs end to end
at tiny sizes and writes its report (the figures mean nothing at these sizes).

``bench.train_speed`` and ``bench.unseen_books`` have theirs beside their subjects
(``tests/training/test_training.py``, ``tests/bench/test_unseen_books.py``); ``bench.gpu`` has
``tests/test_gpu_bench.py``. The full engine benchmark (Ray clusters, an LM, driver memory) takes
a minute even tiny, so its smoke test is ``slow``; the default run covers its in-process and
local-executor part.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from paths import AGNEWS_CSV, GUTENBERG

from nncd_ray.bench import codec, engine, machine, pruning, scorers

needs_agnews = pytest.mark.skipif(not AGNEWS_CSV.exists(), reason=f"no AG News at {AGNEWS_CSV}")


def test_machine_helpers() -> None:
    rate = machine.matmul_rate(n=64, repeats=2)
    assert rate.flops_per_s > 0 and rate.n == 64 and rate.dtype == "float32"
    info = machine.machine_info()
    assert info["load_average"] and machine.peak_rss_bytes() > 0


@pytest.mark.skipif(not (GUTENBERG / "pg1342.txt").exists(), reason="no Gutenberg books")
def test_codec_bench(tmp_path: Path) -> None:
    out = tmp_path / "codec.json"
    assert codec.main(["--max-bytes", "300", "--max-lanes", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert run["original_bytes"] == 300 and run["compress_bytes_per_s"] > 0
    assert run["payload_bits"] >= run["model_bits"] > 0  # a real code, never below Σ −log2 p
    assert set(report["classical_bits_per_byte"]) == {"gzip-9", "bz2-9", "xz"}


@needs_agnews
def test_engine_bench_without_ray(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    argv = ["--data", str(AGNEWS_CSV), "--skip-ray", "--skip-lm", "--repeats", "1"]
    assert engine.main([*argv, "--rss-sizes", "", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    suite = result["gzip"]
    assert suite["pairs"] == 200 * 100 and suite["local_executor"]["wall_seconds"] > 0
    assert "ray_1_actor_cold" not in suite and result["driver_memory"] == []


@pytest.mark.slow
@needs_agnews
def test_engine_bench_whole(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    argv = ["--data", str(AGNEWS_CSV), "--repeats", "1", "--lm-queries", "4", "--lm-refs", "4"]
    argv += ["--lm-tile", "2", "--rss-sizes", "40", "--rss-tile", "20", "--rss-actors", "1"]
    assert engine.main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for suite in (result["gzip"], result["lm"]):
        assert suite["ray_2_actors_warm"]["wall_seconds"] > 0
    assert result["driver_memory"][0]["tiles"] == 4 and result["driver_memory_ok"]


def test_knn_memory_bench(tmp_path: Path) -> None:
    """As a process of its own: it reads peak memory from the resource usage of its children,
    which inside a test session includes every child the session started before."""
    out = tmp_path / "knn.json"
    argv = ["--n", "120", "--tile", "40", "--dir", str(tmp_path), "--json", str(out)]
    command = [sys.executable, "-m", "nncd_ray.bench.knn_memory", *argv]
    subprocess.run(command, check=True, timeout=300, capture_output=True)
    result = json.loads(out.read_text())
    assert result["passed"] and result["block_rows"] >= 40 and result["accuracy_k1"] > 0.25


@needs_agnews
def test_scorers_bench(tmp_path: Path) -> None:
    out = tmp_path / "scorers.json"
    assert scorers.main(["--data", str(AGNEWS_CSV), "--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["lm"]["timed_rows"] == 2 and result["lm"]["max_abs_diff_bits"] < 1e-2
    assert result["gzip"]["identical_lengths"] and result["matmul"]["before"]["n"] == 128
    plan = result["planning"]
    assert (plan["rows"], plan["cols"], plan["budget"]) == (128, 100, 65536)
    cached, naive = plan["prefix_cached"], plan["naive"]
    # the cached path runs each row's prefix once: about half the naive path's tokens
    assert 0 < cached["real_tokens"] < 0.6 * naive["real_tokens"]
    assert cached["padded_tokens"] >= cached["real_tokens"] and cached["passes"] >= 2
    for shape in ("gpt2-small", "llama-1.2b"):  # the same tokens, planned for a GPU
        assert plan["gpu_cost"][shape]["real_tokens"] == cached["real_tokens"]
        assert plan["gpu_cost"][shape]["padded_tokens"] >= cached["real_tokens"]


@needs_agnews
def test_pruning_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nncd_ray.data.protocols import load_protocol
    from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
    from nncd_ray.scorers import ScorerSpec

    split = load_protocol("agnews-small", AGNEWS_CSV)
    dense = str(tmp_path / "dense.zarr")
    config = MatrixConfig(store=dense, scorer=ScorerSpec(name="gzip"), executor="local")
    compute_matrix(config, split.queries, split.refs)
    out = tmp_path / "pruning.json"
    argv = ["--dense", dense, "--protocol", "agnews-small", "--data", str(AGNEWS_CSV)]
    argv += ["--prefilters", "gzip", "--candidates", "10,100", "--hubs", "2"]
    assert pruning.main([*argv, "--work", str(tmp_path / "pf"), "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["hubs"] is None for r in results] == [True, False]
    plain, hubs = (r["curve"] for r in results)
    # gzip ranking gzip's own NCD: its M nearest are the exact neighbours; all 100 is the dense
    assert plain["points"][0]["recall"]["1"] == 1.0
    assert plain["points"][1]["accuracy"] == plain["dense_accuracy"]
    assert plain["dense_accuracy"]["1"] == 0.485  # PROTOCOL.md's gzip baseline
    assert len(results[1]["hubs"]) == 2 and hubs["points"][1]["recall"]["7"] == 1.0
    assert "## prefilter gzip" in capsys.readouterr().out

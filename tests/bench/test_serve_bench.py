"""Smoke tests of ``python -m nncd_ray.bench.serve`` (issue 23).

Its load loop runs against a real service in ``tests/serve/test_serve_http.py`` (no cluster of
its own here); the whole benchmark, which starts a private cluster and deploys the service twice,
is ``slow``. The default run checks what needs no service: it presses on loopback only, and its
table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paths import AGNEWS_CSV

from nncd_ray.bench import serve as serve_bench
from nncd_ray.errors import ConfigError


@pytest.mark.parametrize(
    "url", ["http://192.0.2.1:8000", "https://127.0.0.1:8000", "http://example.com"]
)
def test_the_benchmark_presses_on_loopback_only(url: str) -> None:
    with pytest.raises(ConfigError, match="on this machine"):
        serve_bench.run_load(url, ["a"], serve_bench.Load(duration_s=1), n_refs=1)
    assert serve_bench.main(["--url", url, "--duration", "1", "--warmup", "0"]) == 2


def test_the_load_is_bounded() -> None:
    for load in (serve_bench.Load(clients=0), serve_bench.Load(duration_s=3600)):
        with pytest.raises(ConfigError, match="clients must be"):
            serve_bench.run_load("http://127.0.0.1:9", ["a"], load, n_refs=1)


def test_markdown_table() -> None:
    run = {
        "clients": 8,
        "elapsed_s": 61.2,
        "answered": 30,
        "failed": 0,
        "requests_per_s": 0.49,
        "pairs_per_s": 49.0,
        "latency_ms": {"p50": 15844.6, "p95": 18822.1, "p99": 18953.0},
        "service": {"max_batch": 1, "mean_queries_per_batch": 1.0},
    }
    table = serve_bench.markdown({"modes": {"unbatched": run}})
    assert (
        "| unbatched | 1 | 8 | 61.2 | 30 | 0 | 0.49 | 49 | 15,845 | 18,822 | 18,953 | 1.0 |"
        in table
    )


@pytest.mark.slow  # a private cluster, the service deployed twice: about a minute on 2 cores
@pytest.mark.skipif(not AGNEWS_CSV.exists(), reason=f"no AG News at {AGNEWS_CSV}")
def test_the_whole_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    argv = ["--data", str(AGNEWS_CSV), "--shape", "gpt2-small", "--quick", "--refs", "8"]
    argv += ["--clients", "2", "--duration", "3", "--warmup", "1", "--json", str(out)]
    assert serve_bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["modes"]) == {"batched", "unbatched"} and result["references"] == 8
    for mode, run in result["modes"].items():
        assert run["answered"] > 0 and run["failed"] == 0, mode
    assert result["modes"]["unbatched"]["service"]["max_batch"] == 1

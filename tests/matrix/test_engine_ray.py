"""The matrix engine on one shared local Ray cluster: equality with in-process scoring, faults
(actors killed mid-job, a tile that always fails, a driver killed with SIGKILL), resource checks
and the store lease."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import assert_store_matches, corpus, private_ray, tile_calls
from paths import ROOT
from sparse_helpers import assert_sparse_store_matches, expected_candidates

from nncd_ray.data.corpus import Corpus
from nncd_ray.errors import ClusterError, StoreLocked, StoreMismatch, TileFailed
from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.store.lease import Lease
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.scorers import ScorerSpec

pytestmark = pytest.mark.ray

CPUS = 2


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    with private_ray(CPUS) as address:
        yield address


def config(store: Path, scorer: ScorerSpec, **kw: object) -> MatrixConfig:
    options: dict[str, object] = {"tile": 8, "actors": 1, "progress": False, **kw}
    return MatrixConfig(store=str(store), scorer=scorer, **options)  # type: ignore[arg-type]


SYNTHETIC = ScorerSpec(name="synthetic", options={})


def test_gzip_rectangular_equals_in_process(ray_address: str, tmp_path: Path) -> None:
    rows, cols = corpus(20, "q"), corpus(13, "r")
    spec = ScorerSpec(name="gzip", options={})
    summary = compute_matrix(config(tmp_path / "g.zarr", spec, actors=2), rows, cols)
    assert summary.tiles_total == summary.tiles_computed == 6
    assert summary.pairs_computed == 20 * 13 and summary.executor == "ray"
    assert sum(summary.nodes.values()) == 6
    assert_store_matches(str(tmp_path / "g.zarr"), spec, rows, cols)
    # a second run has nothing left to do
    again = compute_matrix(config(tmp_path / "g.zarr", spec), rows, cols)
    assert again.tiles_computed == 0 and again.tiles_skipped == 6


def test_synthetic_square_ncd_min(ray_address: str, tmp_path: Path) -> None:
    rows = corpus(19, "s")
    summary = compute_matrix(config(tmp_path / "s.zarr", SYNTHETIC, variant="ncd-min"), rows)
    assert summary.tiles_computed == 9  # every tile, both sides of the diagonal
    store = assert_store_matches(str(tmp_path / "s.zarr"), SYNTHETIC, rows, None)
    assert store.square and not store.has_reversed


def test_rectangular_ncd_min_writes_reversed_pairs(ray_address: str, tmp_path: Path) -> None:
    rows, cols = corpus(11, "q"), corpus(9, "r")
    compute_matrix(config(tmp_path / "m.zarr", SYNTHETIC, variant="ncd-min"), rows, cols)
    store = assert_store_matches(str(tmp_path / "m.zarr"), SYNTHETIC, rows, cols)
    assert store.has_reversed


def test_sparse_job_through_ray_with_actor_crashes(ray_address: str, tmp_path: Path) -> None:
    """Candidate pruning on Ray: the prefilter's matrix and the pruned tiles both run on actors;
    two actors killed mid-job (a crash in the tile's one document call) cost only retries."""
    rows, cols = corpus(16, "q"), corpus(10, "r")
    crashes = tmp_path / "crashes"
    spec = ScorerSpec(name="synthetic", options={"crash_dir": str(crashes), "crashes": 2})
    path = tmp_path / "p.zarr"
    summary = compute_matrix(
        config(path, spec, actors=2, tile=4, candidates=4, prefilter="gzip"), rows, cols
    )
    assert summary.layout == "sparse" and summary.executor == "ray"
    assert summary.tiles_computed == 4 and summary.pairs_computed == 16 * 4
    assert summary.prefilter is not None and summary.prefilter["computed"] == 16 * 10
    assert len(list(crashes.iterdir())) == 2 and summary.actor_deaths == 2
    candidates = expected_candidates("gzip", rows, cols, 4)
    assert_sparse_store_matches(str(path), SYNTHETIC, rows, cols, candidates)


@pytest.mark.slow  # torch and transformers load in a fresh Ray worker: ~20 s on 2 cores
def test_small_lm_equals_in_process(ray_address: str, tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    rows, cols = corpus(6, "q"), corpus(5, "r")
    spec = ScorerSpec(name="lm", options={"model": str(tiny_gpt2_dir), "device": "cpu"})
    compute_matrix(config(tmp_path / "lm.zarr", spec, tile=4), rows, cols)
    # tiles batch pairs differently from one whole-matrix call: float32 rounding only
    assert_store_matches(str(tmp_path / "lm.zarr"), spec, rows, cols, rtol=1e-4)


def test_actors_killed_mid_job(ray_address: str, tmp_path: Path) -> None:
    rows, cols = corpus(30, "q"), corpus(20, "r")
    calls, crashes = tmp_path / "calls", tmp_path / "crashes"
    spec = ScorerSpec(
        name="synthetic",
        options={"crash_dir": str(crashes), "crashes": 3, "call_dir": str(calls)},
    )
    summary = compute_matrix(
        config(tmp_path / "f.zarr", spec, tile=5, actors=2, max_attempts=4), rows, cols
    )
    assert len(list(crashes.iterdir())) == 3
    assert summary.actor_deaths == 3 and summary.attempts_failed == 3
    assert summary.tiles_computed == summary.tiles_total == 24 and summary.tiles_failed == 0
    assert summary.actors_started == 2 + 3
    assert_store_matches(str(tmp_path / "f.zarr"), SYNTHETIC, rows, cols)
    # no tile lost; the crashes happen before a tile is scored, so a tile is scored again only
    # when it was the other tile in flight on a crashing actor: at most one extra per crash
    counts = tile_calls(calls, rows, cols, tile=5)
    assert set(counts) == {(r, c) for r in range(6) for c in range(4)}
    assert sum(n - 1 for n in counts.values()) <= 3


def test_tile_failing_every_time_is_recorded(ray_address: str, tmp_path: Path) -> None:
    texts = list(corpus(12, "q").texts)
    texts[5] = "this one is POISON for the scorer"
    rows, cols = Corpus.from_texts(texts), corpus(7, "r")
    spec = ScorerSpec(name="synthetic", options={"fail_on": "POISON"})
    store_path = tmp_path / "p.zarr"
    with pytest.raises(TileFailed, match="2 of 6 tiles failed after 2 attempts") as caught:
        compute_matrix(config(store_path, spec, tile=4, max_attempts=2), rows, cols)
    summary = caught.value.summary  # type: ignore[attr-defined]
    assert summary.tiles_computed == 4 and summary.tiles_failed == 2
    assert summary.attempts_failed == 4
    store = MatrixStore.open(str(store_path))
    assert set(store.failed_tiles) == {"1,0", "1,1"}
    assert all("InjectedFailure" in e for e in store.failed_tiles.values())
    assert store.done_mask().tolist() == [[True, True], [False, False], [True, True]]
    assert store.progress["tiles_failed"] == 2


def test_gpu_request_on_cpu_cluster(ray_address: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ClusterError, match="asked for 1 GPU per actor; the cluster has 0 GPUs"):
        compute_matrix(config(tmp_path / "x.zarr", SYNTHETIC, gpus_per_actor=1), corpus(4, "q"))
    assert time.monotonic() - started < 60  # refused before any actor is created


def test_gpu_request_waits_for_an_autoscaler_when_asked(ray_address: str, tmp_path: Path) -> None:
    # an autoscaling cluster may add GPU nodes later: warn, wait the timeout, then say so
    with pytest.raises(ClusterError, match="no scorer actor started within"):
        compute_matrix(
            config(
                tmp_path / "w.zarr",
                SYNTHETIC,
                gpus_per_actor=1,
                wait_for_resources=True,
                actor_timeout_s=2.0,
            ),
            corpus(4, "q"),
        )


def test_actor_that_cannot_start_is_reported(ray_address: str, tmp_path: Path) -> None:
    import ray

    @ray.remote(num_cpus=CPUS)
    class Hog:
        def ping(self) -> int:
            return 1

    hog = Hog.remote()  # type: ignore[attr-defined]
    ray.get(hog.ping.remote())
    try:
        with pytest.raises(ClusterError, match="no scorer actor started within"):
            compute_matrix(
                config(tmp_path / "h.zarr", SYNTHETIC, actor_timeout_s=3.0), corpus(4, "q")
            )
    finally:
        ray.kill(hog)
    assert Lease(str(tmp_path / "h.zarr")).read() is None  # lease released on the error


def test_second_driver_is_refused_and_mismatch_is_refused(ray_address: str, tmp_path: Path) -> None:
    store = tmp_path / "l.zarr"
    rows = corpus(5, "q")
    with Lease(str(store), settle_s=0.0), pytest.raises(StoreLocked, match="another driver"):
        compute_matrix(config(store, SYNTHETIC), rows)
    compute_matrix(config(store, SYNTHETIC), rows)
    gzip = ScorerSpec(name="gzip", options={})
    with pytest.raises(StoreMismatch, match=r"compressor synthetic .*, not gzip .*level 9"):
        compute_matrix(config(store, gzip), rows)
    redone = compute_matrix(config(store, gzip, overwrite=True), rows)
    assert redone.tiles_computed == 1


def write_jsonl(path: Path, docs: Corpus) -> None:
    with path.open("w") as out:
        for doc_id, text in zip(docs.ids, docs.texts, strict=True):
            out.write(json.dumps({"id": doc_id, "text": text}) + "\n")


def test_driver_sigkilled_mid_job_resumes(ray_address: str, tmp_path: Path) -> None:
    rows, cols = corpus(48, "q", labels=False), corpus(32, "r", labels=False)
    write_jsonl(tmp_path / "q.jsonl", rows)
    write_jsonl(tmp_path / "r.jsonl", cols)
    store, calls = tmp_path / "k.zarr", tmp_path / "calls"
    options = {"delay_s": 0.5, "call_dir": str(calls)}
    command = [
        sys.executable, "-m", "nncd_ray.cli.main", "matrix",
        "--queries", str(tmp_path / "q.jsonl"), "--refs", str(tmp_path / "r.jsonl"),
        "--store", str(store), "--tile", "8", "--actors", "2", "--address", ray_address,
        "--compressor", "synthetic",
        "--scorer-option", "delay_s=0.5", "--scorer-option", f"call_dir={calls}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    driver = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    spec = ScorerSpec(name="synthetic", options=options)
    try:
        deadline = time.monotonic() + 90
        done = 0
        while done < 3:
            assert driver.poll() is None, driver.communicate()[1]
            assert time.monotonic() < deadline, "the driver computed no tiles in 90 s"
            time.sleep(0.2)
            if store.exists() and (store / "zarr.json").exists():
                try:
                    done = MatrixStore.open(str(store)).tiles_done()
                except Exception:  # the store is being created right now
                    done = 0
        with pytest.raises(StoreLocked, match=f"pid {driver.pid}"):
            compute_matrix(config(store, spec, actors=2), rows, cols)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
    assert driver.returncode == -signal.SIGKILL
    marked = MatrixStore.open(str(store)).tiles_done()
    assert 3 <= marked < 24
    summary = compute_matrix(config(store, spec, actors=2), rows, cols)
    assert summary.tiles_skipped == marked and summary.tiles_computed == 24 - marked
    assert_store_matches(str(store), SYNTHETIC, rows, cols)
    counts = tile_calls(calls, rows, cols, tile=8)
    assert set(counts) == {(r, c) for r in range(6) for c in range(4)}
    # at most the tile in flight on each of the 2 actors was computed twice
    assert sum(counts.values()) - 24 <= 2

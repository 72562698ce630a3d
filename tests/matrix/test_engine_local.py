"""The engine's in-process executor and the ``nncd matrix`` / ``nncd status`` commands (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import assert_store_matches, corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nncd_ray.cli.main import main
from nncd_ray.data.corpus import Corpus
from nncd_ray.errors import ClusterError, ConfigError, StoreMismatch, TileFailed
from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.store.lease import Lease
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.scorers import ScorerSpec

SYNTHETIC = ScorerSpec(name="synthetic", options={})
GZIP = ScorerSpec(name="gzip", options={})


def local(store: Path, scorer: ScorerSpec = SYNTHETIC, **kw: object) -> MatrixConfig:
    options: dict[str, object] = {"tile": 4, "executor": "local", "progress": False, **kw}
    return MatrixConfig(store=str(store), scorer=scorer, **options)  # type: ignore[arg-type]


def test_local_gzip_equals_in_process(tmp_path: Path) -> None:
    rows, cols = corpus(9, "q"), corpus(6, "r")
    summary = compute_matrix(local(tmp_path / "g.zarr", GZIP), rows, cols)
    assert (summary.tiles_total, summary.tiles_computed, summary.pairs_computed) == (6, 6, 54)
    assert summary.nodes == {"local": 6} and summary.executor == "local"
    assert summary.work_units > 0
    assert_store_matches(str(tmp_path / "g.zarr"), GZIP, rows, cols)
    assert Lease(str(tmp_path / "g.zarr")).read() is None  # released


def test_local_square_and_resume_after_failures(tmp_path: Path) -> None:
    base = corpus(10, "s")
    texts = list(base.texts)
    texts[1] = "POISON " + texts[1]
    rows = Corpus.from_texts(texts, ids=base.ids, labels=base.labels)
    store = tmp_path / "sq.zarr"
    failing = ScorerSpec(name="synthetic", options={"fail_on": "POISON"})
    with pytest.raises(TileFailed, match="5 of 9 tiles failed") as caught:
        compute_matrix(local(store, failing, max_attempts=2), rows)
    summary = caught.value.summary  # type: ignore[attr-defined]
    assert summary.tiles_computed == 4 and summary.attempts_failed == 10
    done = MatrixStore.open(str(store)).done_mask()
    assert done.tolist() == [[False] * 3, [False, True, True], [False, True, True]]
    resumed = compute_matrix(local(store), rows)
    assert resumed.tiles_skipped == 4 and resumed.tiles_computed == 5
    store_handle = assert_store_matches(str(store), SYNTHETIC, rows, None)
    assert store_handle.failed_tiles == {}
    assert store_handle.progress["runs"] == 2 and store_handle.progress["tiles_done"] == 9


def test_mismatch_refused_before_any_work(tmp_path: Path) -> None:
    rows = corpus(5, "q")
    store = tmp_path / "m.zarr"
    compute_matrix(local(store), rows)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    for changed in (local(store, tile=2), local(store, variant="ncd-min")):
        with pytest.raises(StoreMismatch):
            compute_matrix(changed, rows)
    with pytest.raises(
        StoreMismatch, match=r"rows 5 documents \(sha256 [0-9a-f]+…\), not 6 documents"
    ):
        compute_matrix(local(store), corpus(6, "q"))
    with pytest.raises(
        StoreMismatch, match=r"bits_per_byte 8\.0, not synthetic bits_per_byte 6\.0"
    ):
        compute_matrix(
            local(store, ScorerSpec(name="synthetic", options={"bits_per_byte": 6})), rows
        )
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "bad",
    [{"variant": "cosine"}, {"executor": "dask"}, {"tile": 0}, {"actors": 0}, {"max_attempts": 0}],
)
def test_bad_config(tmp_path: Path, bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        compute_matrix(local(tmp_path / "x.zarr", SYNTHETIC, **bad), corpus(3, "q"))
    assert not (tmp_path / "x.zarr").exists()


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tile=st.integers(min_value=2, max_value=7),
    lost=st.sets(st.integers(min_value=0, max_value=24), max_size=6),
)
def test_resume_equals_a_clean_run(
    tmp_path_factory: pytest.TempPathFactory, tile: int, lost: set[int]
) -> None:
    rows, cols = corpus(9, "q"), corpus(7, "r")
    path = tmp_path_factory.mktemp("resume") / "m.zarr"
    compute_matrix(local(path, tile=tile, variant="ncd-min"), rows, cols)
    store = MatrixStore.open(str(path), mode="r+")
    grid_r, grid_c = store.plan.grid
    # a crash: tiles whose marker never got written, with garbage (or nothing) in their chunks
    for index in lost:
        r, c = divmod(index % (grid_r * grid_c), grid_c)
        tile_box = store.plan.tile_at(r, c)
        store.array("tiles_done")[r, c] = False  # a fill-value chunk is deleted
        garbage = np.full(tile_box.shape, -1.0)
        store.write_tile(
            tile_box,
            row_bits=garbage[:, 0],
            col_bits=garbage[0],
            pair_bits=garbage,
            pair_bits_reversed=garbage,
        )
    missing = int((~store.done_mask()).sum())
    summary = compute_matrix(local(path, tile=tile, variant="ncd-min"), rows, cols)
    assert summary.tiles_computed == missing
    assert_store_matches(str(path), SYNTHETIC, rows, cols)


def write_jsonl(path: Path, docs: Corpus) -> None:
    with path.open("w") as out:
        for doc_id, text, label in zip(docs.ids, docs.texts, docs.labels or (), strict=True):
            out.write(json.dumps({"id": doc_id, "text": text, "label": label}) + "\n")


def test_cli_matrix_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = corpus(7, "d")
    write_jsonl(tmp_path / "docs.jsonl", docs)
    store, summary_path = tmp_path / "cli.zarr", tmp_path / "summary.json"
    args = [
        "matrix", "--input", str(tmp_path / "docs.jsonl"), "--store", str(store),
        "--compressor", "gzip", "--level", "6", "--executor", "local", "--tile", "3",
        "--json", str(summary_path),
    ]  # fmt: skip
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert "9 tiles computed" in line and "49 pairs" in line
    summary = json.loads(summary_path.read_text())
    assert summary["tiles_total"] == 9 and summary["executor"] == "local"
    gzip6 = ScorerSpec(name="gzip", options={"level": 6})
    assert_store_matches(str(store), gzip6, docs, None)
    reader = StoreReader(MatrixStore.open(str(store)))
    assert reader.document_values("row_labels") == [0, 1, 2, 0, 1, 2, 0]

    assert main(["status", "--store", str(store)]) == 0
    text = capsys.readouterr().out
    assert "tiles: 9 done, 0 failed, 9 total (100.0%)" in text and "driver: none running" in text
    assert main(["status", "--store", str(store), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["complete"] and status["pairs_done"] == 49
    assert status["config"]["compressor"]["level"] == 6

    # resuming with another level is refused with one line and exit code 2
    assert main([*args[:-2], "--level", "9"]) == 2
    assert "was computed with compressor gzip level 6, not gzip level 9" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(tmp_path / "docs.jsonl", corpus(4, "d"))
    common = ["matrix", "--input", str(tmp_path / "docs.jsonl"), "--executor", "local"]
    assert main([*common, "--store", str(tmp_path / "a.zarr"), "--compressor", "synthetic",
                 "--scorer-option", "colour=red"]) == 2  # fmt: skip
    assert "not an option of synthetic" in capsys.readouterr().err
    summary = tmp_path / "failed.json"
    code = main([*common, "--store", str(tmp_path / "b.zarr"), "--compressor", "synthetic",
                 "--scorer-option", "fail_on=d 0", "--tile", "2",
                 "--json", str(summary)])  # fmt: skip
    assert code == 2
    assert "TileFailed" not in (err := capsys.readouterr().err) and "tiles failed" in err
    assert json.loads(summary.read_text())["tiles_failed"] == 3
    assert main(["status", "--store", str(tmp_path / "nothing.zarr")]) == 2


def test_unreachable_ray_address_is_refused_quickly(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = MatrixConfig(
        store=str(tmp_path / "a.zarr"),
        scorer=SYNTHETIC,
        executor="ray",
        address=f"127.0.0.1:{port}",
        progress=False,
    )
    with pytest.raises(ClusterError, match="cannot reach the Ray cluster"):
        compute_matrix(config, corpus(3, "q"))
    assert not (tmp_path / "a.zarr").exists()
    assert Lease(str(tmp_path / "a.zarr")).read() is None

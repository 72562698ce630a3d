"""Truncation counted honestly (issue 20, defect 4): the store keeps the bytes each code length
covers, bits per byte divides by them, and every report counts the truncated documents.

The synthetic scorer's ``truncate_bytes`` stands in for an LM that cuts long documents: its
C(x) is exactly 8 bits per *scored* byte, so bits per byte must come out as 8.0; dividing by the
full documents (what c8ebf8c did) gives less.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from nncd_ray.cli import score as score_cli
from nncd_ray.cli.main import main
from nncd_ray.data.corpus import Corpus
from nncd_ray.knn.evaluate import EvaluationConfig, evaluate_store
from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.scorers import ScorerSpec, make_scorer
from nncd_ray.scorers.synthetic import SyntheticScorer

LIMIT = 24
TEXTS = [
    "short one",
    "a much longer document about oil prices and stock markets falling",
    "the team won the cup",
    "naïve café owners über alles – a document with multibyte characters throughout",
    "tiny",
    "another long document: the election result was decided by the court in the end",
]
LABELS = [0, 1, 0, 1, 0, 1]
TRUNCATING = ScorerSpec(name="synthetic", options={"truncate_bytes": LIMIT})


def expected_scored() -> list[int]:
    """Bytes kept: the first LIMIT UTF-8 bytes without a partial character."""
    return [len(t.encode()[:LIMIT].decode("utf-8", errors="ignore").encode()) for t in TEXTS]


@pytest.fixture
def store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> str:
    path = str(tmp_path / "t.zarr")
    docs = Corpus.from_texts(TEXTS, labels=LABELS)
    with caplog.at_level(logging.WARNING):
        summary = compute_matrix(
            MatrixConfig(store=path, scorer=TRUNCATING, tile=4, executor="local", progress=False),
            docs,
        )
    truncated = sum(s < len(t.encode()) for s, t in zip(expected_scored(), TEXTS, strict=True))
    assert truncated == 3
    assert summary.documents_truncated == truncated
    assert summary.bytes_scored == sum(expected_scored())
    assert summary.bytes_total == sum(len(t.encode()) for t in TEXTS)
    assert "3 documents truncated" in summary.one_line()
    assert any("3 of 6 documents were truncated" in r.getMessage() for r in caplog.records)
    return path


def test_store_keeps_the_scored_bytes(store: str) -> None:
    handle = MatrixStore.open(store)
    assert handle.scored_bytes("row") is not None
    assert handle.scored_bytes("row").tolist() == expected_scored()  # type: ignore[union-attr]
    full, _ = StoreReader(handle).document_bytes("row")
    assert full.tolist() == [len(t.encode()) for t in TEXTS]
    # bits cover only the scored bytes: 8 bits per scored byte
    np.testing.assert_array_equal(handle.row_bits(), 8.0 * np.array(expected_scored()))


def test_bits_per_byte_divides_by_scored_bytes(store: str) -> None:
    report = evaluate_store(EvaluationConfig(store=store, ks=(1,)))
    assert report.bits_per_byte == pytest.approx(8.0)
    assert report.compression["bits_per_byte_mean_doc"] == pytest.approx(8.0)
    assert report.documents_truncated == 3
    assert report.to_dict()["documents_truncated"] == 3
    assert "3 of 6 documents were truncated" in (report.truncation_note or "")
    assert "**truncation:** 3 of 6 documents" in report.to_markdown()


def test_knn_and_status_report_the_truncation(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "r.json"
    assert main(["knn", "--store", store, "--k", "1", "--json", str(out_json)]) == 0
    err = capsys.readouterr().err
    assert "nncd knn: warning: 3 of 6 documents were truncated" in err
    report = json.loads(out_json.read_text())
    assert report["documents_truncated"] == 3 and report["bits_per_byte"] == pytest.approx(8.0)
    assert main(["status", "--store", store, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["documents_truncated"] == 3
    assert status["truncation"]["bytes_scored"] == sum(expected_scored())
    assert main(["status", "--store", store]) == 0
    assert "truncation: 3 of 6 documents truncated" in capsys.readouterr().out


def test_score_divides_by_scored_bytes_and_warns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        score_cli, "make_scorer", lambda spec: SyntheticScorer(truncate_bytes=LIMIT)
    )
    argv = ["score", "--compressor", "synthetic"]
    for text in TEXTS[:3]:
        argv += ["--text", text]
    assert main(argv) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["scored_bytes"] for r in records] == expected_scored()[:3]
    assert [r.get("truncated", False) for r in records] == [False, True, False]
    assert all(r["bits_per_byte"] == pytest.approx(8.0) for r in records)
    assert "nncd score: warning: 1 of 3 documents were truncated" in captured.err


def test_classical_compressors_never_truncate() -> None:
    scorer = make_scorer(ScorerSpec(name="gzip"))
    assert scorer.scored_bytes(TEXTS).tolist() == [len(t.encode()) for t in TEXTS]


def test_study_reports_truncation(store: str, tmp_path: Path) -> None:
    """The study table's rows carry the count (``StudyRow.to_dict``), via the k-NN report."""
    from nncd_ray.study.config import CompressorChoice, StudyConfig
    from nncd_ray.study.result import StudyResult
    from nncd_ray.study.run import _row

    report = evaluate_store(EvaluationConfig(store=store, ks=(1,)))
    summary = SimpleNamespace(pairs_per_second=0.0, pairs_computed=0, wall_seconds=0.0)
    row = _row(CompressorChoice(label="synthetic-cut", spec=TRUNCATING), store, summary, report)
    record = row.to_dict()
    assert record["documents_truncated"] == 3 and record["bits_per_byte"] == pytest.approx(8.0)
    result = StudyResult(
        config=StudyConfig(
            protocol="p", data="d", compressors=(), out=str(tmp_path), ks=(1,), plots=False
        ),
        n_queries=6,
        n_refs=6,
        square=True,
        rows=(row,),
        plots=(),
        plots_skipped=None,
    )
    assert "**Truncation, synthetic-cut:** 3 of 6 documents" in result.to_markdown()
    assert json.dumps(result.to_dict())  # JSON-able


def test_scored_bytes_arrays_are_chunked_like_the_tiles(store: str) -> None:
    array = zarr.open_array(str(Path(store) / "row_scored_bytes"))
    assert array.chunks == (4,) and array.dtype == np.int64 and array.fill_value == -1

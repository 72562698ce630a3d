"""A store never lies: checksummed chunks, checked values, ``nncd status --verify``, readers that
refuse a bad tile in one line, and ``nncd matrix`` healing a corrupted store (issue 20, defects 1
and 2). Every test here fails on c8ebf8c, whose chunks had no checksum and whose readers used
whatever decoded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from engine_helpers import assert_store_matches, corpus
from paths import ROOT

from nncd_ray.cli.main import main
from nncd_ray.errors import CorruptTile, InvalidCodeLengths
from nncd_ray.knn.evaluate import EvaluationConfig, evaluate_store
from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.store.integrity import verify_store
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.worker import TileWorker
from nncd_ray.scorers import ScorerSpec
from nncd_ray.scorers.base import TileScores

GZIP = ScorerSpec(name="gzip", options={})
# a square store written by nncd_ray at c8ebf8c (no checksums, no dimension names, no scored
# bytes): 6 documents, gzip, tile 4, every tile done
OLD_STORE = ROOT / "tests" / "fixtures" / "store_c8ebf8c"


def job(path: Path, **kw: object) -> MatrixConfig:
    options: dict[str, object] = {"tile": 4, "executor": "local", "progress": False, **kw}
    return MatrixConfig(store=str(path), scorer=GZIP, **options)  # type: ignore[arg-type]


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    """A finished square gzip store: 10 labelled documents, tile 4, 3 x 3 tiles."""
    path = tmp_path / "m.zarr"
    compute_matrix(job(path), corpus(10, "d"))
    return path


def chunk(path: Path, array: str, *index: int) -> Path:
    return path.joinpath(array, "c", *(str(i) for i in index))


def flip_bit(file: Path, offset: int = 20) -> None:
    data = bytearray(file.read_bytes())
    data[offset % len(data)] ^= 0x04
    file.write_bytes(bytes(data))


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_array_has_a_checksum_and_dimension_names(finished: Path) -> None:
    group = zarr.open_group(str(finished), mode="r")
    names = sorted(name for name, _ in group.arrays())
    assert "row_scored_bytes" in names and "tiles_done" in names
    for name, array in group.arrays():
        codecs = [type(codec).__name__ for codec in array.metadata.codecs]  # type: ignore[union-attr]
        assert codecs[-1] == "Crc32cCodec", (name, codecs)
        assert array.metadata.dimension_names, name  # type: ignore[union-attr]
    assert group["pair_bits"].metadata.dimension_names == ("row", "col")  # type: ignore[union-attr]
    assert group["tiles_done"].metadata.dimension_names == ("tile_row", "tile_col")  # type: ignore[union-attr]


def test_flipped_bit_is_named_by_verify_and_refused_by_knn(
    finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flip_bit(chunk(finished, "pair_bits", 1, 2))
    report = verify_store(MatrixStore.open(str(finished)))
    assert not report.ok and report.bad_tiles() == [(1, 2)]
    assert "checksum" in report.problems[0].reason

    code, out, err = run_cli(["knn", "--store", str(finished)], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "tile (1, 2) (rows 4-7, columns 8-9)" in err and "checksum" in err
    assert "nncd status" in err and "--verify" in err and "nncd matrix" in err

    code, out, _ = run_cli(["status", "--store", str(finished), "--verify", "--json"], capsys)
    assert code == 1
    verified = json.loads(out)["verify"]
    assert verified["ok"] is False and verified["tiles_checked"] == 9
    assert [p["tile"] for p in verified["bad_tiles"]] == [[1, 2]]
    first = verified["bad_tiles"][0]
    assert first["rows"] == [4, 8] and first["cols"] == [8, 10]
    code, out, _ = run_cli(["status", "--store", str(finished), "--verify"], capsys)
    assert code == 1 and "bad tile (1, 2) (rows 4-7, columns 8-9): pair_bits" in out


def test_missing_chunk_and_impossible_values_are_bad(finished: Path) -> None:
    chunk(finished, "pair_bits", 0, 0).unlink()  # reads back as NaN
    pair_bits = zarr.open_array(str(finished / "pair_bits"), mode="r+")
    block = np.asarray(pair_bits[4:8, 4:8])
    block[1, 2] = -1.41e14  # a valid checksum over a negative code length
    pair_bits[4:8, 4:8] = block
    row_bits = zarr.open_array(str(finished / "row_bits"), mode="r+")
    row_bits[8:10] = [np.inf, 5.0]
    report = verify_store(MatrixStore.open(str(finished)))
    reasons = {(p.index_row, p.index_col, p.array): p.reason for p in report.problems}
    assert "NaN" in reasons[(0, 0, "pair_bits")]
    assert "negative (-1.41e+14 bits)" in reasons[(1, 1, "pair_bits")]
    assert "infinite" in reasons[(2, 0, "row_bits")]  # blamed on the band's first done tile
    with pytest.raises(CorruptTile, match=r"tile \(\d, \d\)"):
        evaluate_store(EvaluationConfig(store=str(finished), ks=(1,)))


def test_undecodable_chunk_is_one_line(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chunk(finished, "pair_bits", 2, 1).write_bytes(b"not a zstd frame at all")
    code, _, err = run_cli(["knn", "--store", str(finished)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "tile (2, 1) (rows 8-9, columns 4-7)" in err and "Traceback" not in err


def test_unreadable_marker_and_document_arrays_are_named(
    finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flip_bit(chunk(finished, "tiles_done", 0, 1), offset=3)
    code, _, err = run_cli(["knn", "--store", str(finished)], capsys)
    assert code == 2 and "completion marker of tile (0, 1)" in err
    shutil.copy(chunk(finished, "tiles_done", 0, 0), chunk(finished, "tiles_done", 0, 1))
    flip_bit(chunk(finished, "row_ids", 0))
    code, _, err = run_cli(["knn", "--store", str(finished)], capsys)
    assert code == 2 and "row_ids" in err and len(err.strip().splitlines()) == 1
    report = verify_store(MatrixStore.open(str(finished)))
    assert set(report.array_problems) == {"row_ids"}


def test_running_the_same_command_heals_a_corrupted_store(tmp_path: Path, finished: Path) -> None:
    docs = corpus(10, "d")
    clean = tmp_path / "clean.zarr"
    compute_matrix(job(clean), docs)
    flip_bit(chunk(finished, "pair_bits", 1, 2))
    chunk(finished, "pair_bits", 0, 0).unlink()
    flip_bit(chunk(finished, "col_bits", 1))
    flip_bit(chunk(finished, "tiles_done", 2, 2), offset=3)
    flip_bit(chunk(finished, "row_labels", 0))

    summary = compute_matrix(job(finished), docs)
    # (0, 1) is the first done tile of column band 1, whose col_bits chunk was bad
    assert sorted(summary.tiles_reverified) == ["0,0", "0,1", "1,2", "2,2"]
    assert summary.tiles_computed == 4 and summary.tiles_skipped == 5
    assert "failed verification and were recomputed" in summary.one_line()
    assert verify_store(MatrixStore.open(str(finished))).ok
    assert_store_matches(str(finished), GZIP, docs, None)
    for name in ("pair_bits", "row_bits", "col_bits", "row_labels", "row_scored_bytes"):
        assert np.array_equal(
            zarr.open_array(str(finished / name))[:],
            zarr.open_array(str(clean / name))[:],
            equal_nan=True,
        ), name
    again = compute_matrix(job(finished), docs)
    assert again.tiles_computed == 0 and again.tiles_reverified == {}


def test_resume_without_verification_trusts_the_markers(finished: Path) -> None:
    """``verify=False`` on :meth:`TileLedger.begin` is the old, cheap behaviour (the engine keeps
    the default, verify)."""
    from nncd_ray.matrix.tile_ledger import TileLedger

    flip_bit(chunk(finished, "pair_bits", 1, 2))
    store = MatrixStore.open(str(finished), mode="r+")
    book = TileLedger.begin(
        store, store.plan, executor="local", progress=False, started=0.0, verify=False
    )
    assert book.todo == [] and book.reverified == {}
    book.close()


def test_a_scorer_returning_nan_never_makes_a_done_tile(tmp_path: Path) -> None:
    docs = corpus(4, "n")
    path = tmp_path / "nan.zarr"
    compute_matrix(job(path), docs)
    worker = TileWorker(
        spec=GZIP, store_url=str(path), storage_options=None, row_texts=docs.texts, col_texts=None
    )

    def broken(rows: object, cols: object) -> TileScores:
        return TileScores(
            row_bits=np.ones(4), col_bits=np.ones(4), pair_bits=np.full((4, 4), np.nan)
        )

    worker.scorer.score_tile = broken  # type: ignore[method-assign]
    before = zarr.open_array(str(path / "pair_bits"))[:]
    with pytest.raises(InvalidCodeLengths, match="pair_bits holds 16 impossible"):
        worker.compute(MatrixStore.open(str(path)).plan.tile_at(0, 0))
    assert np.array_equal(zarr.open_array(str(path / "pair_bits"))[:], before)


def test_a_store_from_c8ebf8c_is_still_read_verified_and_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old"
    shutil.copytree(OLD_STORE, path)
    code, out, _ = run_cli(["knn", "--store", str(path), "--k", "1"], capsys)
    assert code == 0 and "| 1 |" in out
    code, out, _ = run_cli(["status", "--store", str(path), "--verify", "--json"], capsys)
    status = json.loads(out)
    assert code == 0 and status["verify"]["ok"] and status["verify"]["tiles_checked"] == 4
    assert status["truncation"]["recorded"] is False
    texts = [
        "the cat sat on the mat",
        "stocks fell as oil rose",
        "the team won the cup final",
        "a cat and a dog on a mat",
        "oil prices and stock markets",
        "the coach of the team",
    ]
    from nncd_ray.data.corpus import Corpus

    docs = Corpus.from_texts(texts, ids=[f"d{i}" for i in range(6)], labels=[0, 1, 2, 0, 1, 2])
    summary = compute_matrix(job(path), docs)
    assert summary.tiles_computed == 0 and summary.tiles_skipped == 4
    # a corrupted old store (no checksum) is caught by the value checks and healed
    pair_bits = zarr.open_array(str(path / "pair_bits"), mode="r+")
    pair_bits[4:6, 0:4] = -2.0
    summary = compute_matrix(job(path), docs)
    assert list(summary.tiles_reverified) == ["1,0"] and summary.tiles_computed == 1
    assert_store_matches(str(path), GZIP, docs, None)

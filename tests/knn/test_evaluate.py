"""The k-NN stage over stores written with plain zarr in the public layout."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from knn_store_helpers import synthetic_bits, write_plain_store

import nncd_ray.knn.evaluate as evaluate_module
import nncd_ray.matrix.store.reader as reader_module
from nncd_ray.cli import knn as knn_cli
from nncd_ray.errors import ConfigError, IncompleteMatrix, InputError, StoreError, StoreNotFound
from nncd_ray.knn.accumulator import knn_classify
from nncd_ray.knn.evaluate import EvaluationConfig, evaluate_store
from nncd_ray.knn.statistics import Hubness
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.ncd import ncd_matrix

KS = (1, 3, 5)


def float32_ncd(row_bits, col_bits, pair_bits, variant="ncd", reversed_=None, square=False):
    """The expected distances: the store keeps float32, so round the same way first."""
    f32 = lambda a: None if a is None else np.asarray(a, dtype=np.float32)  # noqa: E731
    return ncd_matrix(
        f32(row_bits), f32(col_bits), f32(pair_bits), variant, f32(reversed_), square=square
    )


@pytest.fixture
def rectangular(tmp_path: Path) -> dict[str, Any]:
    row_bits, col_bits, pair_bits = synthetic_bits(23, 17, seed=5)
    rng = np.random.default_rng(6)
    row_labels = rng.integers(1, 4, 23).tolist()
    col_labels = rng.integers(1, 4, 17).tolist()
    row_bytes = rng.integers(100, 400, 23)
    col_bytes = rng.integers(100, 400, 17)
    store = write_plain_store(
        tmp_path / "rect.zarr",
        pair_bits=pair_bits,
        row_bits=row_bits,
        col_bits=col_bits,
        tile=5,
        row_labels=row_labels,
        col_labels=col_labels,
        row_bytes=row_bytes,
        col_bytes=col_bytes,
        compressor={"compressor": "gzip", "level": 9},
    )
    return {
        "store": store,
        "row_bits": row_bits,
        "col_bits": col_bits,
        "pair_bits": pair_bits,
        "row_labels": row_labels,
        "col_labels": col_labels,
        "row_bytes": row_bytes,
        "col_bytes": col_bytes,
    }


def test_complete_store_matches_in_memory_knn(rectangular: dict[str, Any]) -> None:
    report = evaluate_store(EvaluationConfig(store=rectangular["store"], ks=KS))
    distances = float32_ncd(
        rectangular["row_bits"], rectangular["col_bits"], rectangular["pair_bits"]
    )
    _, expected = knn_classify(distances, rectangular["col_labels"], KS)
    for k in KS:
        assert list(report.predictions[k]) == expected[k]
        correct = sum(p == t for p, t in zip(expected[k], rectangular["row_labels"], strict=True))
        assert report.result(k).accuracy == pytest.approx(correct / 23)
        assert sum(map(sum, report.result(k).confusion)) == 23
    assert report.n_queries == 23 and report.n_refs == 17 and report.skipped_rows == ()
    assert report.variant == "ncd" and not report.square
    assert report.result(1).labels == (1, 2, 3)
    # hubness: each reference's k-occurrence, from the same neighbours
    nearest = np.argsort(distances, axis=1, kind="stable")
    for hubs in report.hubness:
        counts = np.bincount(nearest[:, : hubs.k].ravel(), minlength=17)
        assert hubs.max_count == counts.max() and hubs.never == int((counts == 0).sum())
        assert [count for _, count in hubs.top] == sorted(counts, reverse=True)[: len(hubs.top)]
    record = report.to_dict()["hubness"][0]
    hub = record["top"][0]
    assert hub["id"] == report.reference_ids[hub["col"]]
    assert hub["label"] == rectangular["col_labels"][hub["col"]]
    low, high = report.to_dict()["results"][0]["accuracy_95ci"]
    assert low <= report.result(1).accuracy <= high


def test_bits_per_byte_is_total_bits_over_total_bytes(rectangular: dict[str, Any]) -> None:
    report = evaluate_store(EvaluationConfig(store=rectangular["store"], ks=(1,)))
    bits = np.concatenate([rectangular["row_bits"], rectangular["col_bits"]])
    n_bytes = np.concatenate([rectangular["row_bytes"], rectangular["col_bytes"]])
    assert report.bits_per_byte == pytest.approx(bits.sum() / n_bytes.sum())
    assert report.compression["bits_per_byte_mean_doc"] == pytest.approx(np.mean(bits / n_bytes))
    assert report.compression["n_documents"] == 40
    assert report.compression["rows"]["bits_per_byte"] == pytest.approx(
        rectangular["row_bits"].sum() / rectangular["row_bytes"].sum()
    )


def test_reading_is_block_bounded(
    rectangular: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No read of pair_bits ever covers more rows than one block; the result does not depend on
    the block size."""
    read_shapes: list[tuple[int, ...]] = []
    original = MatrixStore.array

    class Spy:
        def __init__(self, array: Any) -> None:
            self.array = array
            self.shape, self.chunks = array.shape, array.chunks

        def __getitem__(self, selection: Any) -> Any:
            values = self.array[selection]
            read_shapes.append(np.shape(values))
            return values

    def spying(store: MatrixStore, name: str) -> Any:
        array = original(store, name)
        return Spy(array) if name == "pair_bits" else array

    whole = evaluate_store(EvaluationConfig(store=rectangular["store"], ks=KS))
    monkeypatch.setattr(MatrixStore, "array", spying)
    monkeypatch.setattr(reader_module, "BAND_BYTES", 0)  # no band of tiles fits
    blocked = evaluate_store(EvaluationConfig(store=rectangular["store"], ks=KS, block_rows=3))
    # one chunk piece (at most 3 rows of one 5-column tile) per read, every cell read once
    assert read_shapes and all(shape[0] <= 3 and shape[1] <= 5 for shape in read_shapes)
    assert sum(shape[0] * shape[1] for shape in read_shapes) == 23 * 17
    assert blocked.predictions == whole.predictions and blocked.block_rows == 3
    assert [m.to_dict() for m in blocked.results] == [m.to_dict() for m in whole.results]

    # a band of tiles within BAND_BYTES is read once (whole chunks) and shared by its blocks
    read_shapes.clear()
    monkeypatch.setattr(reader_module, "BAND_BYTES", 5 * 17 * 4)
    banded = evaluate_store(EvaluationConfig(store=rectangular["store"], ks=KS, block_rows=2))
    assert all(shape[0] <= 5 and shape[1] <= 5 for shape in read_shapes)
    assert sum(shape[0] * shape[1] for shape in read_shapes) == 23 * 17
    assert banded.predictions == whole.predictions


def test_default_block_is_whole_tiles_within_the_budget(
    rectangular: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluate_module, "BLOCK_BYTES", 8 * 17 * 12)  # 12 rows of 17 float64
    report = evaluate_store(EvaluationConfig(store=rectangular["store"], ks=(1,)))
    assert report.block_rows == 10  # two tiles of 5
    monkeypatch.setattr(evaluate_module, "BLOCK_BYTES", 8 * 17 * 3)
    assert evaluate_store(EvaluationConfig(store=rectangular["store"], ks=(1,))).block_rows == 3


def partial_store(tmp_path: Path, name: str) -> tuple[str, np.ndarray, list[int], list[int]]:
    row_bits, col_bits, pair_bits = synthetic_bits(12, 9, seed=7)
    row_labels = [0, 1, 2] * 4
    col_labels = [0, 1, 2] * 3
    done = np.ones((3, 3), dtype=bool)
    done[1, 2] = False  # rows 4-7 are missing one tile
    store = write_plain_store(
        tmp_path / name,
        pair_bits=pair_bits,
        row_bits=row_bits,
        col_bits=col_bits,
        tile=4,
        row_labels=row_labels,
        col_labels=col_labels,
        done=done,
    )
    return store, float32_ncd(row_bits, col_bits, pair_bits), row_labels, col_labels


def test_incomplete_matrix_is_refused_unless_partial_is_allowed(tmp_path: Path) -> None:
    store, distances, _, col_labels = partial_store(tmp_path, "partial.zarr")
    with pytest.raises(IncompleteMatrix, match=r"1 of 9 tiles not computed.*--allow-partial"):
        evaluate_store(EvaluationConfig(store=store, ks=(1, 3)))
    report = evaluate_store(EvaluationConfig(store=store, ks=(1, 3), allow_partial=True))
    assert report.skipped_rows == (4, 5, 6, 7)
    assert report.query_rows == (0, 1, 2, 3, 8, 9, 10, 11)
    assert report.query_ids == ("row0", "row1", "row2", "row3", "row8", "row9", "row10", "row11")
    kept = [0, 1, 2, 3, 8, 9, 10, 11]
    _, expected = knn_classify(distances[kept], col_labels, (1, 3))
    assert {k: list(v) for k, v in report.predictions.items()} == expected
    assert report.result(1).n_queries == 8
    assert report.to_dict()["skipped_rows"] == [4, 5, 6, 7]
    assert "skipped 4 rows not fully computed: 4-7" in report.to_markdown()
    # rows 4-7 have C(x) from their done tiles: all 12 count in bits per byte
    assert report.compression["rows"]["n_documents"] == 12


def test_documents_without_code_length_are_left_out_of_bits_per_byte(tmp_path: Path) -> None:
    row_bits, col_bits, pair_bits = synthetic_bits(6, 4, seed=13)
    done = np.array([[True, True], [False, False], [True, True]])
    store = write_plain_store(
        tmp_path / "band.zarr",
        pair_bits=pair_bits,
        row_bits=row_bits,
        col_bits=col_bits,
        tile=2,
        row_labels=[0, 1] * 3,
        col_labels=[0, 1] * 2,
        done=done,
        row_bytes=np.arange(1, 7) * 10,
        col_bytes=np.full(4, 50),
    )
    report = evaluate_store(EvaluationConfig(store=store, ks=(1,), allow_partial=True))
    assert report.skipped_rows == (2, 3)
    kept = [0, 1, 4, 5]
    assert report.compression["rows"]["n_documents"] == 4
    assert report.compression["n_documents"] == 8
    assert report.bits_per_byte == pytest.approx(
        (row_bits[kept].sum() + col_bits.sum()) / (np.array([10, 20, 50, 60]).sum() + 200)
    )


def test_partial_with_no_complete_row_is_refused(tmp_path: Path) -> None:
    row_bits, col_bits, pair_bits = synthetic_bits(4, 4, seed=8)
    done = np.array([[True, False], [False, True]])
    store = write_plain_store(
        tmp_path / "none.zarr",
        pair_bits=pair_bits,
        row_bits=row_bits,
        col_bits=col_bits,
        tile=2,
        row_labels=[0, 1, 0, 1],
        col_labels=[0, 1, 0, 1],
        done=done,
    )
    with pytest.raises(IncompleteMatrix, match="no fully computed row"):
        evaluate_store(EvaluationConfig(store=store, ks=(1,), allow_partial=True))


def square_store(
    tmp_path: Path, variant: str = "ncd", done: np.ndarray | None = None
) -> tuple[str, np.ndarray, np.ndarray, list[str]]:
    row_bits, _, pair_bits = synthetic_bits(14, 14, seed=9, square=True)
    np.fill_diagonal(pair_bits, row_bits + 8)  # a document is nearly free after itself
    labels = ["b", "a", "c", "a", "b", "c", "a"] * 2
    store = write_plain_store(
        tmp_path / f"square-{variant}.zarr",
        pair_bits=pair_bits,
        row_bits=row_bits,
        col_bits=row_bits,
        tile=4,
        row_labels=labels,
        col_labels=labels,
        square=True,
        variant=variant,
        done=done,
    )
    return store, row_bits, pair_bits, labels


def test_square_store_is_leave_one_out(tmp_path: Path) -> None:
    store, row_bits, pair_bits, labels = square_store(tmp_path)
    report = evaluate_store(EvaluationConfig(store=store, ks=(1, 3), block_rows=3))
    distances = float32_ncd(row_bits, row_bits, pair_bits)
    assert np.all(np.argmin(distances, axis=1) == np.arange(14))  # self would always win
    _, expected = knn_classify(distances, labels, (1, 3), leave_one_out=True)
    assert {k: list(v) for k, v in report.predictions.items()} == expected
    assert report.square and report.to_dict()["leave_one_out"]
    assert report.result(1).labels == ("a", "b", "c")
    # a square store's documents are counted once in bits per byte
    assert report.compression["n_documents"] == 14
    with pytest.raises(ConfigError, match="k=14"):
        evaluate_store(EvaluationConfig(store=store, ks=(14,)))


@pytest.mark.parametrize("block_rows", [3, 5, None])
def test_square_ncd_min_reads_the_transposed_block(tmp_path: Path, block_rows: int | None) -> None:
    """Blocks smaller than a tile (3 < 4, bands of tiles kept), crossing tiles (5), all (None)."""
    store, row_bits, pair_bits, labels = square_store(tmp_path, variant="ncd-min")
    report = evaluate_store(EvaluationConfig(store=store, ks=(1, 3, 5), block_rows=block_rows))
    distances = float32_ncd(row_bits, row_bits, pair_bits, "ncd-min", square=True)
    _, expected = knn_classify(distances, labels, (1, 3, 5), leave_one_out=True)
    assert {k: list(v) for k, v in report.predictions.items()} == expected
    # the same store read as plain ncd gives the ncd answer
    plain = evaluate_store(EvaluationConfig(store=store, ks=(1, 3, 5), variant="ncd"))
    _, expected_plain = knn_classify(
        float32_ncd(row_bits, row_bits, pair_bits), labels, (1, 3, 5), leave_one_out=True
    )
    assert {k: list(v) for k, v in plain.predictions.items()} == expected_plain
    assert plain.variant == "ncd" and report.variant == "ncd-min"


def test_square_ncd_min_partial_needs_the_transposed_tiles_too(tmp_path: Path) -> None:
    done = np.ones((4, 4), dtype=bool)
    done[0, 2] = False  # row band 0 incomplete; and column band 2 (rows 8-11 need it for C(yx))
    store, *_ = square_store(tmp_path, variant="ncd-min", done=done)
    report = evaluate_store(EvaluationConfig(store=store, ks=(1,), allow_partial=True))
    assert report.skipped_rows == (0, 1, 2, 3, 8, 9, 10, 11)
    as_ncd = evaluate_store(
        EvaluationConfig(store=store, ks=(1,), allow_partial=True, variant="ncd")
    )
    assert as_ncd.skipped_rows == (0, 1, 2, 3)


def test_rectangular_ncd_min(rectangular: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pair_bits_reversed"):
        evaluate_store(EvaluationConfig(store=rectangular["store"], ks=(1,), variant="ncd-min"))
    rng = np.random.default_rng(11)
    reversed_bits = rectangular["pair_bits"] + rng.integers(-60, 60, rectangular["pair_bits"].shape)
    store = write_plain_store(
        tmp_path / "rect-min.zarr",
        pair_bits=rectangular["pair_bits"],
        pair_bits_reversed=reversed_bits,
        row_bits=rectangular["row_bits"],
        col_bits=rectangular["col_bits"],
        tile=5,
        row_labels=rectangular["row_labels"],
        col_labels=rectangular["col_labels"],
        variant="ncd-min",
    )
    report = evaluate_store(EvaluationConfig(store=store, ks=(1, 3), block_rows=4))
    distances = float32_ncd(
        rectangular["row_bits"],
        rectangular["col_bits"],
        rectangular["pair_bits"],
        "ncd-min",
        reversed_bits,
    )
    _, expected = knn_classify(distances, rectangular["col_labels"], (1, 3))
    assert {k: list(v) for k, v in report.predictions.items()} == expected


def test_reports_are_written(rectangular: dict[str, Any], tmp_path: Path) -> None:
    report = evaluate_store(EvaluationConfig(store=rectangular["store"], ks=(1, 3)))
    report.write_json(tmp_path / "r.json")
    report.write_predictions(tmp_path / "p.jsonl")
    report.write_markdown(tmp_path / "r.md")
    data = json.loads((tmp_path / "r.json").read_text())
    for key in ("results", "bits_per_byte", "n_queries", "n_refs", "variant", "skipped_rows"):
        assert key in data
    assert [r["k"] for r in data["results"]] == [1, 3]
    assert set(data["results"][0]) >= {"k", "accuracy", "macro_f1", "confusion", "labels"}
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 23
    assert lines[0] == {
        "row": 0,
        "id": "row0",
        "label": rectangular["row_labels"][0],
        "predicted": {"1": report.predictions[1][0], "3": report.predictions[3][0]},
    }
    markdown = (tmp_path / "r.md").read_text()
    assert "| 1 | " in markdown and "Confusion matrix, k=3" in markdown
    assert "95% interval" in markdown and "N_k skewness" in markdown
    assert "compressor: gzip level 9" in markdown


def test_store_without_labels(tmp_path: Path) -> None:
    row_bits, col_bits, pair_bits = synthetic_bits(5, 4, seed=12)
    common = {"pair_bits": pair_bits, "row_bits": row_bits, "col_bits": col_bits, "tile": 2}
    no_refs = write_plain_store(tmp_path / "a.zarr", row_labels=None, col_labels=None, **common)
    with pytest.raises(InputError, match="no reference labels"):
        evaluate_store(EvaluationConfig(store=no_refs, ks=(1,)))
    no_queries = write_plain_store(
        tmp_path / "b.zarr", row_labels=None, col_labels=["x", "y", "x", "y"], **common
    )
    report = evaluate_store(EvaluationConfig(store=no_queries, ks=(1,)))
    assert report.results == () and report.true_labels is None
    assert len(report.predictions[1]) == 5
    assert "predictions only" in report.to_markdown()


def test_missing_or_foreign_store(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFound):
        evaluate_store(EvaluationConfig(store=str(tmp_path / "nothing.zarr")))
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a complete nncd matrix store"):
        evaluate_store(EvaluationConfig(store=str(tmp_path / "other.zarr")))


def knn_command(argv: list[str]) -> int:
    """``nncd knn`` through its own parser (the CLI entry adds only error handling)."""
    parser = argparse.ArgumentParser(prog="nncd")
    knn_cli.register(parser.add_subparsers())
    return knn_cli.run(parser.parse_args(["knn", *argv]))


def test_cli_writes_everything(
    rectangular: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = knn_command(
        [
            "--store",
            rectangular["store"],
            "--k",
            "1,3",
            "--json",
            str(tmp_path / "r.json"),
            "--predictions",
            str(tmp_path / "p.jsonl"),
            "--markdown",
            str(tmp_path / "r.md"),
            "--block-rows",
            "7",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert captured.err == ""  # no reference is nearest to 10 of the 23 queries: no hub note
    assert printed == (tmp_path / "r.md").read_text()
    assert "| k | accuracy | 95% interval | macro-F1 | correct |" in printed
    assert json.loads((tmp_path / "r.json").read_text())["block_rows"] == 7
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 23


def test_cli_rejects_bad_k(rectangular: dict[str, Any]) -> None:
    with pytest.raises(SystemExit):
        knn_command(["--store", rectangular["store"], "--k", "1,x"])
    with pytest.raises(ConfigError, match="only 17"):
        knn_command(["--store", rectangular["store"], "--k", "18"])


# ---- mutual proximity --------------------------------------------------------------------------


def reference_mutual_proximity(distances: np.ndarray, leave_one_out: bool) -> np.ndarray:
    """Plain Python from the definition (Schnitzer et al. 2012, Gaussian form), with the
    standard library's normal distribution: 1 - P(X > d) P(Y > d), X ~ the query's distances to
    the references, Y ~ the reference's distances from the queries, the query itself left out."""
    from statistics import NormalDist, fmean, pstdev

    n_rows, n_cols = distances.shape
    own = (lambda i, j: i == j) if leave_one_out else (lambda i, j: False)
    rows = [[distances[i, j] for j in range(n_cols) if not own(i, j)] for i in range(n_rows)]
    cols = [[distances[i, j] for i in range(n_rows) if not own(i, j)] for j in range(n_cols)]
    out = np.full(distances.shape, np.nan)
    for i in range(n_rows):
        x = NormalDist(fmean(rows[i]), pstdev(rows[i]))
        for j in range(n_cols):
            if own(i, j):
                continue
            y = NormalDist(fmean(cols[j]), pstdev(cols[j]))
            d = distances[i, j]
            out[i, j] = 1 - (1 - x.cdf(d)) * (1 - y.cdf(d))
    return out


@pytest.mark.parametrize("block_rows", [4, 7, None])
def test_mutual_proximity_matches_its_definition(
    rectangular: dict[str, Any], block_rows: int | None
) -> None:
    report = evaluate_store(
        EvaluationConfig(
            store=rectangular["store"], ks=KS, block_rows=block_rows, hubness_reduction="mp"
        )
    )
    distances = float32_ncd(
        rectangular["row_bits"], rectangular["col_bits"], rectangular["pair_bits"]
    )
    expected_mp = reference_mutual_proximity(distances, leave_one_out=False)
    _, expected = knn_classify(expected_mp, rectangular["col_labels"], KS)
    assert {k: list(v) for k, v in report.predictions.items()} == expected
    assert report.to_dict()["hubness_reduction"] == "mp"
    assert "not the protocol's k-NN" in report.to_markdown()
    plain = evaluate_store(EvaluationConfig(store=rectangular["store"], ks=KS))
    assert plain.to_dict()["hubness_reduction"] == "none"


def test_mutual_proximity_leave_one_out(tmp_path: Path) -> None:
    store, row_bits, pair_bits, labels = square_store(tmp_path)
    report = evaluate_store(
        EvaluationConfig(store=store, ks=(1, 3), block_rows=3, hubness_reduction="mp")
    )
    expected_mp = reference_mutual_proximity(
        float32_ncd(row_bits, row_bits, pair_bits), leave_one_out=True
    )
    _, expected = knn_classify(expected_mp, labels, (1, 3), leave_one_out=True)
    assert {k: list(v) for k, v in report.predictions.items()} == expected


def test_mutual_proximity_takes_the_hub_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reference 0 sits a little closer to every query than the query's own class does: plain
    k-NN sends every query to it; mutual proximity discounts it and finds the classes again."""
    rng = np.random.default_rng(11)
    n_rows, n_cols = 40, 12
    row_labels = [i % 4 for i in range(n_rows)]
    col_labels = [j % 4 for j in range(n_cols)]
    same = np.equal.outer(row_labels, col_labels)
    col_bits = np.full(n_cols, 1000.0)
    row_bits = np.full(n_rows, 1000.0)
    # NCD = (C(xy) - 1000) / 1000: 0.90 within a class, 0.95 across, 0.85 to the hub
    distance = np.where(same, 0.90, 0.95) + rng.normal(0, 0.004, (n_rows, n_cols))
    distance[:, 0] = 0.85 + rng.normal(0, 0.004, n_rows)
    store = write_plain_store(
        tmp_path / "hub.zarr",
        pair_bits=1000.0 + 1000.0 * distance,
        row_bits=row_bits,
        col_bits=col_bits,
        tile=8,
        row_labels=row_labels,
        col_labels=col_labels,
    )
    plain = evaluate_store(EvaluationConfig(store=store, ks=(1,)))
    reduced = evaluate_store(EvaluationConfig(store=store, ks=(1,), hubness_reduction="mp"))
    assert plain.hubness[0].top == ((0, n_rows),) and plain.result(1).accuracy == 0.25
    assert reduced.hubness[0].max_count <= n_rows // 4
    assert reduced.hubness[0].skewness < plain.hubness[0].skewness
    assert reduced.result(1).accuracy >= 0.75
    # the plain report names the hub and the remedy; the reduced one has nothing to say
    note = plain.hub_note
    assert note is not None and "column 0" in note and f"40 of {n_rows} queries" in note
    assert "--hubness-reduction mp" in note and reduced.hub_note is None
    assert plain.to_dict()["hub_note"] == note and f"**Hub:** {note}." in plain.to_markdown()
    assert knn_command(["--store", store, "--k", "1"]) == 0
    assert f"nncd knn: note: {note}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("n_queries", "top_count", "noted"),
    [(100, 10, True), (100, 9, False), (200, 20, True), (200, 19, False), (40, 9, False)],
)
def test_hub_note_threshold(
    rectangular: dict[str, Any], n_queries: int, top_count: int, noted: bool
) -> None:
    """A note when one reference is nearest to at least 10% of the queries and at least 10."""
    report = evaluate_store(EvaluationConfig(store=rectangular["store"], ks=(1,)))
    counts = [top_count] + [1] * (n_queries - top_count) + [0] * 3
    hubs = Hubness.from_counts(counts, k=1, n_queries=n_queries)
    changed = dataclasses.replace(report, hubness=(hubs,), reference_ids=("hub-id",))
    assert (changed.hub_note is not None) == noted
    if noted:
        assert changed.hub_note is not None and "'hub-id'" in changed.hub_note
    assert dataclasses.replace(changed, hubness_reduction="mp").hub_note is None


def test_unknown_hubness_reduction(rectangular: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="hubness reduction"):
        evaluate_store(EvaluationConfig(store=rectangular["store"], hubness_reduction="csls"))
    with pytest.raises(SystemExit):
        knn_command(["--store", rectangular["store"], "--hubness-reduction", "csls"])

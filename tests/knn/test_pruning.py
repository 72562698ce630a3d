"""k-NN on sparse stores (neighbours among the candidates), the classifier on them, and the
comparison of a pruned store with the dense one (``nncd knn --compare``, the curve over M)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import corpus
from sparse_helpers import expected_candidates

from nncd_ray.cli.main import main
from nncd_ray.data.corpus import Corpus
from nncd_ray.errors import ConfigError, InputError
from nncd_ray.knn.accumulator import knn_classify
from nncd_ray.knn.classifier import NCDKNNClassifier
from nncd_ray.knn.evaluate import EvaluationConfig, evaluate_store
from nncd_ray.knn.neighbours import top_k_neighbours
from nncd_ray.knn.pruning import compare_stores
from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.ncd import ncd_cells, ncd_matrix
from nncd_ray.scorers import ScorerSpec, make_scorer

KS = (1, 3, 5)


def build(path: Path, rows: Corpus, cols: Corpus, **kw: object) -> str:
    config = MatrixConfig(
        store=str(path),
        scorer=ScorerSpec(name="gzip"),
        tile=8,
        executor="local",
        progress=False,
        **kw,  # type: ignore[arg-type]
    )
    compute_matrix(config, rows, cols)
    return str(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Corpus, Corpus]:
    """A dense gzip store and a pruned one (8 of 30 references per query, zstd prefilter)."""
    base = tmp_path_factory.mktemp("pruning")
    rows, cols = corpus(40, "q"), corpus(30, "r")
    dense = build(base / "dense.zarr", rows, cols)
    pruned = build(base / "pruned.zarr", rows, cols, candidates=8)
    return dense, pruned, rows, cols


def gzip_ncd(rows: Corpus, cols: Corpus) -> np.ndarray:
    scorer = make_scorer(ScorerSpec(name="gzip"))
    return ncd_matrix(
        scorer.document_bits(rows.texts).astype(np.float32),
        scorer.document_bits(cols.texts).astype(np.float32),
        scorer.pair_bits(rows.texts, cols.texts).astype(np.float32),
    )


def test_ncd_cells_is_ncd_matrix_cell_by_cell() -> None:
    rng = np.random.default_rng(0)
    row_bits, col_bits = rng.uniform(50, 100, 4), rng.uniform(50, 100, 6)
    pairs, reverse = rng.uniform(90, 200, (4, 6)), rng.uniform(90, 200, (4, 6))
    chosen = np.array([[0, 2, 5], [1, 0, 3], [4, 5, 2], [3, 1, 0]])
    for variant in ("ncd", "ncd-min"):
        full = ncd_matrix(row_bits, col_bits, pairs, variant, pair_bits_reversed=reverse)
        cells = ncd_cells(
            row_bits,
            col_bits[chosen],
            np.take_along_axis(pairs, chosen, axis=1),
            variant,
            pair_bits_reversed=np.take_along_axis(reverse, chosen, axis=1),
        )
        np.testing.assert_array_equal(cells, np.take_along_axis(full, chosen, axis=1))
    with pytest.raises(ConfigError, match="ncd-min needs pair_bits_reversed"):
        ncd_cells(row_bits, col_bits[chosen], pairs[:, :3], "ncd-min")


def test_knn_on_a_sparse_store_is_knn_among_the_candidates(
    stores: tuple[str, str, Corpus, Corpus],
) -> None:
    _, pruned, rows, cols = stores
    report = evaluate_store(EvaluationConfig(store=pruned, ks=KS, block_rows=5))
    assert report.candidates == 8 and report.n_refs == 30 and report.n_queries == 40
    # the dense NCD with every cell but the candidates' made NaN (never a neighbour)
    distances = gzip_ncd(rows, cols)
    chosen = expected_candidates("zstd", rows, cols, 8)
    masked = np.full_like(distances, np.nan)
    np.put_along_axis(masked, chosen, np.take_along_axis(distances, chosen, axis=1), axis=1)
    _, expected = knn_classify(masked, list(cols.labels or ()), KS)
    for k in KS:
        assert list(report.predictions[k]) == expected[k]
    assert "neighbours among each query's 8 candidates" in report.to_markdown()
    assert json.loads(json.dumps(report.to_dict()))["candidates"] == 8
    classifier = NCDKNNClassifier.from_store(pruned, n_neighbors=3)
    assert list(classifier.store_predictions_) == expected[3]
    with pytest.raises(ConfigError, match="needs every query's distance to every reference"):
        evaluate_store(EvaluationConfig(store=pruned, hubness_reduction="mp"))


def test_compare_recall_accuracy_and_pairs(stores: tuple[str, str, Corpus, Corpus]) -> None:
    dense, pruned, rows, cols = stores
    comparison = compare_stores(pruned, dense, ks=KS, curve=(5, 8, 30))
    distances = gzip_ncd(rows, cols)
    exact, _ = top_k_neighbours(distances, 5)
    chosen = expected_candidates("zstd", rows, cols, 8)
    for k in KS:
        inside = [len(set(exact[i, :k]) & set(chosen[i])) for i in range(40)]
        assert comparison.recall[k] == pytest.approx(sum(inside) / (40 * k))
    assert (comparison.pairs_pruned, comparison.pairs_dense) == (320, 1200)
    dense_report = evaluate_store(EvaluationConfig(store=dense, ks=KS))
    pruned_report = evaluate_store(EvaluationConfig(store=pruned, ks=KS))
    for k in KS:
        assert comparison.accuracy_dense[k] == dense_report.result(k).accuracy
        assert comparison.accuracy_pruned[k] == pruned_report.result(k).accuracy
    curve = comparison.curve
    assert curve is not None and [p.candidates for p in curve.points] == [5, 8, 30]
    at_m, everything = curve.points[1], curve.points[2]
    # derived at M equals the real pruned run; M = every reference equals the dense store
    assert at_m.recall == comparison.recall and at_m.accuracy == comparison.accuracy_pruned
    assert everything.accuracy == comparison.accuracy_dense
    assert all(v == 1.0 for v in everything.recall.values())
    assert curve.dense_accuracy == comparison.accuracy_dense
    assert curve.points[0].recall[1] <= at_m.recall[1]


def test_cli_compare(
    stores: tuple[str, str, Corpus, Corpus], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dense, pruned, _, _ = stores
    out = tmp_path / "cmp.json"
    argv = ["knn", "--store", pruned, "--compare", dense, "--k", "1,3", "--curve", "4,8"]
    assert main([*argv, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pairs the scorer computed: 320 of 1,200 (26.7%)" in text
    assert "| recall@k |" in text and "| 8 | 26.7% |" in text
    saved = json.loads(out.read_text())
    assert saved["candidates"] == 8 and saved["share_of_pairs"] == pytest.approx(320 / 1200)
    for argv, message in (
        (["knn", "--store", dense, "--compare", pruned], "is a dense store"),
        (["knn", "--store", pruned, "--compare", pruned], "not a dense queries × references"),
        (["knn", "--store", pruned, "--curve", "4"], "--curve derives"),
        (["knn", "--store", pruned, "--compare", dense, "--curve", "2"], "k=7 needs at least 7"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_compare_refuses_other_documents(
    stores: tuple[str, str, Corpus, Corpus], tmp_path: Path
) -> None:
    _, pruned, _, cols = stores
    other = build(tmp_path / "other.zarr", corpus(40, "x"), cols)
    with pytest.raises(InputError, match="hold other rows documents"):
        compare_stores(pruned, other)


def test_compare_counts_the_hub_probe(
    stores: tuple[str, str, Corpus, Corpus], tmp_path: Path
) -> None:
    dense, _, rows, cols = stores
    pruned = build(tmp_path / "hubs.zarr", rows, cols, candidates=8, hubs=2, hub_sample=5)
    comparison = compare_stores(pruned, dense, ks=KS, curve=(8,))
    assert comparison.hubs == 2 and comparison.pairs_pruned == 40 * 8 + 5 * 30
    assert comparison.curve is not None
    # the curve puts the same hubs first: at M it is the real pruned run
    assert comparison.curve.points[0].recall == comparison.recall
    assert comparison.curve.points[0].accuracy == comparison.accuracy_pruned
    assert "2 of them the scorer's hubs" in comparison.to_markdown()

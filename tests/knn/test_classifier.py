"""NCDKNNClassifier: precomputed NCD, scikit-learn model selection, stores, API without sklearn."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from knn_store_helpers import synthetic_bits, write_plain_store
from paths import ROOT

from nncd_ray.errors import ConfigError, InputError
from nncd_ray.knn.accumulator import knn_classify
from nncd_ray.knn.classifier import NCDKNNClassifier
from nncd_ray.knn.evaluate import EvaluationConfig, evaluate_store


def clustered_distances(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A square, symmetric distance matrix of ``n`` points in 3 noisy clusters, with ties."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.array([[0.0, 0.0], [1.0, 0.3], [0.4, 1.0]])
    points = centres[labels] + rng.normal(0, 0.45, (n, 2))
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    return np.round(distances, 1), labels  # rounding makes exact ties common


def test_predict_follows_the_protocol_rule() -> None:
    distances, labels = clustered_distances(60, seed=0)
    queries, refs = distances[40:, :40], labels[:40]
    for k in (1, 3, 5, 7):
        clf = NCDKNNClassifier(n_neighbors=k).fit(distances[:40, :40], refs)
        _, expected = knn_classify(queries, refs.tolist(), [k])
        assert clf.predict(queries).tolist() == expected[k]
        assert clf.score(queries, labels[40:]) == pytest.approx(
            np.mean(np.asarray(expected[k]) == labels[40:])
        )
    assert NCDKNNClassifier(n_neighbors=3).fit(None, refs).predict(queries).shape == (20,)


def test_vote_tie_differs_from_lowest_label_rule() -> None:
    """Two neighbours of different classes: the nearer wins, even if its label is larger."""
    clf = NCDKNNClassifier(n_neighbors=2).fit(None, [2, 1])
    assert clf.predict([[0.1, 0.2]]).tolist() == [2]
    assert clf.predict_proba([[0.1, 0.2]]).tolist() == [[0.5, 0.5]]  # classes_ = [1, 2]
    assert clf.classes_.tolist() == [1, 2]


def test_kneighbors_and_proba() -> None:
    clf = NCDKNNClassifier(n_neighbors=3).fit(None, ["a", "b", "a", "c"])
    distances, indices = clf.kneighbors([[0.4, 0.1, 0.4, 0.9]])
    assert indices.tolist() == [[1, 0, 2]]
    assert distances.tolist() == [[0.1, 0.4, 0.4]]
    assert clf.predict_proba([[0.4, 0.1, 0.4, 0.9]]).tolist() == [[2 / 3, 1 / 3, 0.0]]
    assert clf.predict([[0.4, 0.1, 0.4, 0.9]]).tolist() == ["a"]


def test_bad_use_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="precomputed"):
        NCDKNNClassifier(metric="euclidean").fit(None, [0, 1])
    with pytest.raises(ConfigError, match="not fitted"):
        NCDKNNClassifier().predict([[0.1]])
    with pytest.raises(InputError, match="n_refs = 2"):
        NCDKNNClassifier().fit(None, [0, 1]).predict([[0.1, 0.2, 0.3]])
    with pytest.raises(InputError, match="n_refs = 2"):
        NCDKNNClassifier().fit(np.zeros((3, 3)), [0, 1])
    with pytest.raises(ConfigError, match="k=3"):
        NCDKNNClassifier(n_neighbors=3).fit(None, [0, 1])
    with pytest.raises(InputError, match="no usable"):
        NCDKNNClassifier().fit(None, [0, 1]).predict([[0.2, 0.1], [np.nan, np.nan]])


def test_cross_val_score_slices_the_square_matrix() -> None:
    model_selection = pytest.importorskip("sklearn.model_selection")
    distances, labels = clustered_distances(90, seed=1)
    folds = model_selection.KFold(n_splits=3)
    scores = model_selection.cross_val_score(
        NCDKNNClassifier(n_neighbors=5), distances, labels, cv=folds
    )
    expected = []
    for train, test in folds.split(distances):
        _, predicted = knn_classify(distances[np.ix_(test, train)], labels[train].tolist(), [5])
        expected.append(np.mean(np.asarray(predicted[5]) == labels[test]))
    assert scores.tolist() == pytest.approx(expected)
    assert min(scores) > 0.5  # clusters are separable enough to beat 1/3 by far


def test_grid_search_and_pipeline() -> None:
    model_selection = pytest.importorskip("sklearn.model_selection")
    pipeline_module = pytest.importorskip("sklearn.pipeline")
    base = pytest.importorskip("sklearn.base")
    distances, labels = clustered_distances(60, seed=2)
    search = model_selection.GridSearchCV(NCDKNNClassifier(), {"n_neighbors": [1, 3, 5]}, cv=3).fit(
        distances, labels
    )
    assert search.best_params_["n_neighbors"] in (1, 3, 5)
    pipeline = pipeline_module.Pipeline([("knn", NCDKNNClassifier(n_neighbors=3))])
    pipeline.fit(distances[:45, :45], labels[:45])
    direct = NCDKNNClassifier(n_neighbors=3).fit(None, labels[:45])
    assert (
        pipeline.predict(distances[45:, :45]).tolist()
        == direct.predict(distances[45:, :45]).tolist()
    )
    clone = base.clone(NCDKNNClassifier(n_neighbors=7))
    assert clone.get_params() == {"n_neighbors": 7, "metric": "precomputed"}
    assert base.is_classifier(clone)


def test_from_store_predicts_the_query_rows(tmp_path: Path) -> None:
    row_bits, col_bits, pair_bits = synthetic_bits(11, 8, seed=3)
    row_labels = ["x", "y"] * 5 + ["x"]
    col_labels = ["y", "x"] * 4
    store = write_plain_store(
        tmp_path / "s.zarr",
        pair_bits=pair_bits,
        row_bits=row_bits,
        col_bits=col_bits,
        tile=3,
        row_labels=row_labels,
        col_labels=col_labels,
    )
    clf = NCDKNNClassifier.from_store(store, n_neighbors=3, block_rows=2)
    report = evaluate_store(EvaluationConfig(store=store, ks=(3,)))
    assert clf.store_predictions_.tolist() == list(report.predictions[3])
    assert clf.store_query_ids_ == tuple(f"row{i}" for i in range(11))
    assert clf.store_report_.result(3).accuracy == report.result(3).accuracy
    assert clf.classes_.tolist() == ["x", "y"] and clf.n_refs_ == 8
    # the fitted classifier also takes new query distances against the store's references
    assert clf.predict(np.zeros((2, 8)) + np.arange(8)).tolist() == ["y", "y"]


def load_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of nncd_ray.knn.classifier imported while scikit-learn cannot be imported."""
    for name in list(sys.modules):
        if name == "sklearn" or name.startswith("sklearn."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.base", None)
    path = ROOT / "nncd_ray" / "knn" / "classifier.py"
    spec = importlib.util.spec_from_file_location("classifier_without_sklearn", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_api_without_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_without_sklearn(monkeypatch)
    assert not module.BaseEstimator.__module__.startswith("sklearn")
    clf = module.NCDKNNClassifier(n_neighbors=3)
    assert clf.get_params() == {"n_neighbors": 3, "metric": "precomputed"}
    assert clf.set_params(n_neighbors=1) is clf and clf.n_neighbors == 1
    with pytest.raises(ValueError, match="invalid parameter"):
        clf.set_params(weights="distance")
    distances, labels = clustered_distances(40, seed=4)
    clf.fit(distances[:30, :30], labels[:30])
    _, expected = knn_classify(distances[30:, :30], labels[:30].tolist(), [1])
    assert clf.predict(distances[30:, :30]).tolist() == expected[1]
    assert clf.score(distances[30:, :30], labels[30:]) == pytest.approx(
        np.mean(np.asarray(expected[1]) == labels[30:])
    )
    assert repr(clf) == "NCDKNNClassifier(n_neighbors=1, metric='precomputed')"

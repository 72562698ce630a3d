"""NCDKNNClassifier passes scikit-learn's own estimator checks (issue 20, defect 9).

On c8ebf8c 15 of 56 checks failed: NaN and inf accepted by fit, a non-square matrix accepted by a
pairwise estimator, predict before fit not a NotFittedError, continuous targets taken as labels,
sparse input refused without saying so. The tags that steer the checks (``pairwise``, not
``sparse``) are set, with the reason, in ``NCDKNNClassifier.__sklearn_tags__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from test_classifier import load_without_sklearn

from nncd_ray.errors import InputError, NNCDError
from nncd_ray.knn.classifier import NCDKNNClassifier

sklearn_checks = pytest.importorskip("sklearn.utils.estimator_checks")
exceptions = pytest.importorskip("sklearn.exceptions")
sparse = pytest.importorskip("scipy.sparse")


@sklearn_checks.parametrize_with_checks([NCDKNNClassifier()])
def test_scikit_learn_estimator_checks(estimator: Any, check: Callable[[Any], None]) -> None:
    check(estimator)


SQUARE = np.array([[0.0, 0.4, 0.9], [0.4, 0.0, 0.7], [0.9, 0.7, 0.0]])
LABELS = [0, 1, 1]


def test_the_refusals_scikit_learn_asks_for_are_project_errors() -> None:
    """Each refusal is an InputError (the CLI's one-line errors) that says what is wrong."""
    for bad, word in ((np.nan, "NaN"), (np.inf, "inf")):
        matrix = SQUARE.copy()
        matrix[1, 2] = bad
        with pytest.raises(InputError, match=word):
            NCDKNNClassifier().fit(matrix, LABELS)
        queries = np.vstack([SQUARE[0], matrix[1]])  # the second query has a bad distance
        with pytest.raises(InputError, match=f"{word}.*the first is row 1"):
            NCDKNNClassifier().fit(SQUARE, LABELS).predict(queries)
    with pytest.raises(InputError, match="square"):
        NCDKNNClassifier().fit(SQUARE[:, :2], LABELS)
    with pytest.raises(exceptions.NotFittedError, match="not fitted"):
        NCDKNNClassifier().predict(SQUARE)
    with pytest.raises(InputError, match="continuous"):
        NCDKNNClassifier().fit(SQUARE, [0.5, 1.2, 3.3])
    with pytest.raises(InputError, match=r"[Ss]parse"):
        NCDKNNClassifier().fit(sparse.csr_array(SQUARE), LABELS)


def test_same_refusals_without_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_without_sklearn(monkeypatch)
    classifier = module.NCDKNNClassifier
    matrix = SQUARE.copy()
    matrix[0, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        classifier().fit(matrix, LABELS)
    with pytest.raises(InputError, match="square"):
        classifier().fit(SQUARE[:2], LABELS[:2])
    with pytest.raises(NNCDError, match="not fitted"):
        classifier().predict(SQUARE)
    with pytest.raises(InputError, match="continuous"):
        classifier().fit(SQUARE, [0.5, 1.2, 3.3])
    with pytest.raises(InputError, match="Reshape"):
        classifier().fit(SQUARE, LABELS).predict(SQUARE[0])

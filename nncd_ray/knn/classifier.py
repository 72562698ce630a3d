"""A scikit-learn compatible k-NN classifier over precomputed NCD matrices or a matrix store.

``NCDKNNClassifier`` follows the k-NN rule of ``shared/bench/PROTOCOL.md`` exactly (neighbours
in (distance, reference index) order, majority vote, ties to the class whose nearest member is
nearest), which scikit-learn's ``KNeighborsClassifier`` does not (it gives a vote tie to the
lowest class label).

With scikit-learn installed (the ``sklearn`` extra) it is a real ``BaseEstimator`` /
``ClassifierMixin`` tagged ``pairwise``, so ``cross_val_score``, ``GridSearchCV`` and ``Pipeline``
slice a square NCD matrix correctly (train × train to fit, test × train to predict), and it passes
scikit-learn's ``check_estimator`` (inputs checked as :mod:`nncd_ray.knn.classifier_validation`
describes). Without it the class keeps the same ``fit`` / ``predict`` / ``score`` /
``get_params`` API and refuses the same inputs.

    clf = NCDKNNClassifier(n_neighbors=3).fit(None, reference_labels)
    clf.predict(ncd_queries_by_refs)                    # (n_queries, n_refs) distances

    clf = NCDKNNClassifier.from_store("runs/gzip.zarr", n_neighbors=3)
    clf.store_predictions_                              # the store's query rows, predicted
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nncd_ray.errors import ConfigError, InputError
from nncd_ray.knn.classifier_validation import NotFitted, fit_matrix, labels_from, predict_matrix
from nncd_ray.knn.labels import NO_LABEL, LabelCodec
from nncd_ray.knn.neighbours import check_ks, predict_codes, top_k_neighbours

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator, ClassifierMixin

    from nncd_ray.knn.report import EvaluationReport
else:
    try:
        from sklearn.base import BaseEstimator, ClassifierMixin
    except ImportError:  # scikit-learn is an optional extra: the same API without it

        class BaseEstimator:
            """``get_params`` / ``set_params`` from the constructor's keyword arguments."""

            def get_params(self, deep: bool = True) -> dict[str, Any]:
                names = [
                    name
                    for name in inspect.signature(type(self).__init__).parameters
                    if name != "self"
                ]
                return {name: getattr(self, name) for name in names}

            def set_params(self, **params: Any) -> Any:
                valid = self.get_params()
                for name, value in params.items():
                    if name not in valid:
                        raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}")
                    setattr(self, name, value)
                return self

            def __repr__(self) -> str:
                shown = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
                return f"{type(self).__name__}({shown})"

        class ClassifierMixin:
            """``score`` = mean accuracy of ``predict``."""

            def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
                predicted = np.asarray(self.predict(X))  # type: ignore[attr-defined]
                weights = None if sample_weight is None else np.asarray(sample_weight, float)
                return float(np.average(predicted == np.asarray(y), weights=weights))


# the only metric: the caller supplies distances (an NCD matrix), never feature vectors
METRICS = ("precomputed",)
# rows classified per numpy block (bounds temporary memory to BLOCK_ROWS × n_refs float64 copies)
BLOCK_ROWS = 1024


class NCDKNNClassifier(ClassifierMixin, BaseEstimator):
    """k-NN over NCD distances with the project's tie rule.

    Parameters
    ----------
    n_neighbors:
        ``k``, the number of neighbours that vote.
    metric:
        ``"precomputed"``: ``fit`` takes the (n_refs, n_refs) reference × reference matrix (or
        ``None``; it is not needed) and ``predict`` takes (n_queries, n_refs) query × reference
        distances, in the same reference order as the labels given to ``fit``.
    """

    def __init__(self, n_neighbors: int = 1, metric: str = "precomputed") -> None:
        self.n_neighbors = n_neighbors
        self.metric = metric

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # fit takes the square reference × reference distance matrix and predict the query ×
        # reference one, so model selection slices rows and columns alike; scikit-learn's checks
        # then feed it square matrices (and check that non-square ones are refused)
        tags.input_tags.pairwise = True
        # NCD matrices are dense; sparse input is refused with a message that says so
        tags.input_tags.sparse = False
        return tags

    # -- fitting --------------------------------------------------------------------------------

    def _check_params(self) -> int:
        if self.metric not in METRICS:
            raise ConfigError(
                f"metric {self.metric!r} is not supported; NCD k-NN takes metric='precomputed' "
                "distance matrices"
            )
        return check_ks([self.n_neighbors])[0]

    def fit(self, X: ArrayLike | None, y: Sequence[Any] | ArrayLike) -> NCDKNNClassifier:
        """Remember the reference labels ``y`` (n_refs,); ``X`` is the square (n_refs, n_refs)
        reference × reference matrix, checked (finite, square, dense) but not otherwise needed,
        or ``None``."""
        k = self._check_params()
        if X is None:
            labels = labels_from(self, y)
            self.n_features_in_ = len(labels)
        else:
            _, labels = fit_matrix(self, X, y)
        check_ks([k], len(labels))
        codec = LabelCodec.from_labels(labels)
        self.codec_ = codec
        self.classes_ = np.asarray(codec.labels)
        self.reference_codes_ = codec.encode(labels)
        self.n_refs_ = len(labels)
        return self

    def _distances(self, X: ArrayLike) -> NDArray[np.float64]:
        if not hasattr(self, "reference_codes_"):
            raise NotFitted("this NCDKNNClassifier is not fitted yet; call fit first")
        return predict_matrix(self, X, self.n_refs_)

    # -- prediction -----------------------------------------------------------------------------

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Labels ``(n_queries,)`` for (n_queries, n_refs) distances, which must be finite (a NaN
        is a pair never computed): :class:`InputError` otherwise."""
        k = self._check_params()
        matrix = self._distances(X)
        codes = np.concatenate(
            [
                predict_codes(
                    matrix[start : start + BLOCK_ROWS], self.reference_codes_, [k], len(self.codec_)
                )[k]
                for start in range(0, matrix.shape[0], BLOCK_ROWS)
            ]
            or [np.zeros(0, dtype=np.int64)]
        )
        missing = np.flatnonzero(codes == NO_LABEL)
        if missing.size:
            raise InputError(
                f"{missing.size} queries have no usable (non-NaN) distance, the first is row "
                f"{int(missing[0])}"
            )
        return np.asarray(self.classes_)[codes]

    def kneighbors(
        self,
        X: ArrayLike,
        n_neighbors: int | None = None,
        return_distance: bool = True,
    ) -> tuple[NDArray[np.float64], NDArray[np.int64]] | NDArray[np.int64]:
        """Nearest references in (distance, index) order: ``(distances, indices)``, each
        ``(n_queries, k)``."""
        k = check_ks([n_neighbors if n_neighbors is not None else self._check_params()])[0]
        indices, distances = top_k_neighbours(self._distances(X), k)
        return (distances, indices) if return_distance else indices

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """Vote fractions ``(n_queries, n_classes)`` in ``classes_`` order. (A tie in votes is
        broken by ``predict``'s nearest-member rule, which the fractions cannot show.)"""
        k = self._check_params()
        indices, _ = top_k_neighbours(self._distances(X), k)
        codes = np.where(indices >= 0, self.reference_codes_[np.maximum(indices, 0)], NO_LABEL)
        votes = np.stack([(codes == c).sum(axis=1) for c in range(len(self.codec_))], axis=1)
        totals = votes.sum(axis=1, keepdims=True)
        return np.divide(votes, totals, out=np.zeros(votes.shape), where=totals > 0)

    # -- stores ---------------------------------------------------------------------------------

    @classmethod
    def from_store(
        cls,
        url: str,
        *,
        n_neighbors: int = 1,
        variant: str | None = None,
        allow_partial: bool = False,
        block_rows: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> NCDKNNClassifier:
        """A classifier fitted on a store's reference labels, with its query rows classified.

        Reads the store in row blocks (see :mod:`nncd_ray.knn.evaluate`; leave-one-out on a square
        store; on a sparse store, neighbours among each query's candidates). Sets
        ``store_predictions_`` (labels of the classified rows), ``store_query_ids_``,
        ``store_query_rows_`` and ``store_report_`` (the full report: accuracy, macro-F1,
        confusion, bits per byte).
        """
        from nncd_ray.knn.evaluate import EvaluationConfig, evaluate_store

        classifier = cls(n_neighbors=n_neighbors)
        k = classifier._check_params()
        report: EvaluationReport = evaluate_store(
            EvaluationConfig(
                store=url,
                ks=(k,),
                variant=variant,
                allow_partial=allow_partial,
                block_rows=block_rows,
                storage_options=storage_options,
            )
        )
        classifier.fit(None, list(report.reference_labels))
        classifier.store_report_ = report
        classifier.store_predictions_ = np.asarray(report.predictions[k])
        classifier.store_query_ids_ = report.query_ids
        classifier.store_query_rows_ = report.query_rows
        return classifier

"""Input checks of :class:`~nncd_ray.knn.classifier.NCDKNNClassifier`, as scikit-learn expects them.

With scikit-learn installed the checks are its own (``validate_data``,
``check_classification_targets``), so the classifier passes ``check_estimator`` and its messages
are the ones scikit-learn users know; without it, plain numpy checks refuse the same inputs. Both
raise :class:`~nncd_ray.errors.InputError` (a ``ValueError``) for bad values, so the project's
error handling applies.

What is refused: NaN or infinite distances (a NaN is a pair never computed: the classifier does
not guess around it), a reference matrix that is not square (a pairwise estimator's ``fit`` takes
reference × reference distances), sparse matrices (NCD matrices are dense), complex numbers,
continuous targets (k-NN classifies labels), a missing ``y``, and ``predict`` before ``fit``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nncd_ray.errors import ConfigError, InputError

if TYPE_CHECKING:
    from sklearn.exceptions import NotFittedError as _NotFittedBase
else:
    try:
        from sklearn.exceptions import NotFittedError as _NotFittedBase
    except ImportError:  # same bases as scikit-learn's

        class _NotFittedBase(ValueError, AttributeError):
            """Stand-in for ``sklearn.exceptions.NotFittedError``."""


try:
    from sklearn.base import BaseEstimator
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_array, column_or_1d, validate_data

    HAVE_SKLEARN = True
except ImportError:
    HAVE_SKLEARN = False


class NotFitted(ConfigError, _NotFittedBase):
    """``predict`` (or ``kneighbors``, ``predict_proba``) before ``fit``; also scikit-learn's
    ``NotFittedError`` when it is installed."""


def _sklearn(estimator: Any) -> bool:
    """Whether to use scikit-learn's validation: installed, and ``estimator`` is one of its
    estimators (the classifier's fallback base class, used without scikit-learn, is not)."""
    return HAVE_SKLEARN and isinstance(estimator, BaseEstimator)


def _as_input_error(exc: ValueError) -> InputError:
    return exc if isinstance(exc, InputError) else InputError(str(exc))


def _refuse_sparse(X: Any) -> None:
    if hasattr(X, "toarray") or hasattr(X, "tocsr"):
        raise InputError(
            "sparse input is not supported: NCDKNNClassifier takes a dense distance matrix "
            "(convert it with .toarray())"
        )


def _refuse_non_finite(matrix: NDArray[np.float64], what: str) -> None:
    finite = np.isfinite(matrix)
    if finite.all():
        return
    rows = np.flatnonzero(~finite.all(axis=1))
    raise InputError(
        f"{what} must be finite: {rows.size} row(s) hold NaN or inf distances (the first is row "
        f"{int(rows[0])}); a NaN is a pair never computed, and a query with one has no usable "
        "neighbour order; compute the missing pairs or leave those references out"
    )


def labels_from(estimator: Any, y: Any) -> list[Any]:
    """The reference labels as a list, checked to be class labels (1-D, not continuous)."""
    if y is None:
        raise InputError("NCDKNNClassifier requires y to be passed, but the target y is None")
    if _sklearn(estimator):
        try:
            values = column_or_1d(np.asarray(y), warn=True)
            check_classification_targets(values)
        except ValueError as exc:
            raise _as_input_error(exc) from exc
    else:
        values = np.asarray(y)
        if values.ndim == 2 and values.shape[1] == 1:
            warnings.warn("A column-vector y was passed when a 1d array was expected", stacklevel=3)
        values = values.ravel()
        if values.dtype.kind == "f" and not np.all(
            np.isfinite(values) & (values == np.round(values))
        ):
            raise InputError("Unknown label type: continuous targets; k-NN needs class labels")
    labels: list[Any] = values.tolist()
    if not labels:
        raise InputError("fit needs at least one labelled reference")
    return labels


def fit_matrix(estimator: Any, X: ArrayLike, y: Any) -> tuple[NDArray[np.float64], list[Any]]:
    """Check ``fit``'s ``X``, the square (n_refs, n_refs) reference distances, with its ``y``;
    sets ``estimator.n_features_in_``."""
    _refuse_sparse(X)
    if _sklearn(estimator):
        try:
            matrix = validate_data(
                estimator, X, accept_sparse=False, dtype=np.float64, ensure_all_finite=False
            )
        except ValueError as exc:
            raise _as_input_error(exc) from exc
    else:
        matrix = np.asarray(X, dtype=np.float64)
        if matrix.ndim != 2 or 0 in matrix.shape:
            raise InputError(f"fit takes a 2-D distance matrix, not shape {matrix.shape}")
        estimator.n_features_in_ = int(matrix.shape[1])
    labels = labels_from(estimator, y)
    _refuse_non_finite(matrix, "fit's distances")
    if matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(labels):
        raise InputError(
            "fit takes the square (n_refs, n_refs) reference × reference distances (a pairwise "
            f"estimator) with n_refs = {len(labels)} labels, not shape {matrix.shape}"
        )
    return matrix, labels


def predict_matrix(estimator: Any, X: ArrayLike, n_refs: int) -> NDArray[np.float64]:
    """Check the (n_queries, n_refs) query × reference distances given to ``predict``: values
    first (NaN, inf), then the width, as scikit-learn's own validation orders them."""
    _refuse_sparse(X)
    if _sklearn(estimator):
        try:
            matrix = check_array(
                X, accept_sparse=False, dtype=np.float64, ensure_all_finite=False,
                ensure_min_samples=0,
            )  # fmt: skip
        except ValueError as exc:
            raise _as_input_error(exc) from exc
    else:
        matrix = np.asarray(X, dtype=np.float64)
        if matrix.ndim != 2:
            raise InputError(
                f"predict takes (n_queries, n_refs) distances, not shape {matrix.shape}; Reshape "
                "your data with X.reshape(1, -1) for a single query"
            )
    _refuse_non_finite(matrix, "predict's distances")
    if matrix.shape[1] != n_refs:
        raise _wrong_width(matrix.shape, n_refs)
    return matrix


def _wrong_width(shape: tuple[int, ...], n_refs: int) -> InputError:
    return InputError(
        f"predict takes (n_queries, n_refs) distances with n_refs = {n_refs}, not shape "
        f"{tuple(shape)}: X has {shape[1]} features, but NCDKNNClassifier is expecting {n_refs} "
        "features as input"
    )

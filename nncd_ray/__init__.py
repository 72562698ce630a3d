"""nncd_ray: Neural Normalized Compression Distance matrices with language models on Ray.

The public names a user needs are importable from here::

    from nncd_ray import MatrixConfig, ScorerSpec, compute_matrix, load_protocol
    from nncd_ray import EvaluationConfig, NCDKNNClassifier, evaluate_store

Importing the package is cheap: each name is looked up in its module the first time it is used
(PEP 562), so torch, transformers, Ray and Zarr load only when the part that needs them is used.
The subpackages, in the order their imports point (each imports only those before it):
``data`` → ``scorers`` → ``matrix`` (with ``codec`` and ``training`` beside it) → ``knn`` →
``study`` and ``serve`` → ``cli`` and ``bench``; ``errors`` and ``ncd`` (the science: NCD from
code lengths) sit below them all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nncd_ray.errors import NNCDError

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC: dict[str, str] = {
    "Corpus": "nncd_ray.data.corpus",
    "load_corpus": "nncd_ray.data.loading",
    "load_protocol": "nncd_ray.data.protocols",
    "ScorerSpec": "nncd_ray.scorers",
    "make_scorer": "nncd_ray.scorers",
    "MatrixConfig": "nncd_ray.matrix.config",
    "compute_matrix": "nncd_ray.matrix.engine",
    "EvaluationConfig": "nncd_ray.knn.evaluate",
    "evaluate_store": "nncd_ray.knn.evaluate",
    "NCDKNNClassifier": "nncd_ray.knn.classifier",
    "ServiceClient": "nncd_ray.serve.client",
}

if TYPE_CHECKING:  # the same names for type checkers; never executed
    from nncd_ray.data.corpus import Corpus
    from nncd_ray.data.loading import load_corpus
    from nncd_ray.data.protocols import load_protocol
    from nncd_ray.knn.classifier import NCDKNNClassifier
    from nncd_ray.knn.evaluate import EvaluationConfig, evaluate_store
    from nncd_ray.matrix.config import MatrixConfig
    from nncd_ray.matrix.engine import compute_matrix
    from nncd_ray.scorers import ScorerSpec, make_scorer
    from nncd_ray.serve.client import ServiceClient


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'nncd_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = [
    "Corpus",
    "EvaluationConfig",
    "MatrixConfig",
    "NCDKNNClassifier",
    "NNCDError",
    "ScorerSpec",
    "ServiceClient",
    "__version__",
    "compute_matrix",
    "evaluate_store",
    "load_corpus",
    "load_protocol",
    "make_scorer",
]

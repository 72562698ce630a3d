"""Prefilters for candidate pruning: what chooses, for each query, the references that the scorer
pairs it with (``nncd matrix --candidates M --prefilter NAME``).

A lazy name → class registry, like the scorers' (:mod:`nncd_ray.scorers`): the keys are the CLI's
``--prefilter`` choices, and a prefilter's heavy imports (torch, the embedding model) load only
when it is used. Each prefilter follows :class:`~nncd_ray.matrix.prefilter.base.Prefilter`:

- ``zstd`` (the default), ``gzip``, ``bz2``, ``lzma``: the classical compressor's NCD, computed by
  the matrix engine itself (tiles, markers, resume, Ray) into the sparse store's ``prefilter``
  group (:mod:`~nncd_ray.matrix.prefilter.classical`);
- ``embed``: cosine distance of sentence embeddings (all-MiniLM-L6-v2, mean pooling), the optional
  ``[embed]`` extra (:mod:`~nncd_ray.matrix.prefilter.embedding`).

Another prefilter (the LM's own document embedding, or C(y) alone) is one more module with a class
that follows the protocol, and one more line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from nncd_ray.errors import ConfigError
from nncd_ray.matrix.prefilter.base import (
    Prefilter,
    PrefilterJob,
    PrefilterReader,
    PrefilterSummary,
)

# name -> ("module:Class", constructor options); the keys are the CLI's --prefilter choices
_REGISTRY: dict[str, tuple[str, Mapping[str, Any]]] = {
    "zstd": ("nncd_ray.matrix.prefilter.classical:ClassicalPrefilter", {"compressor": "zstd"}),
    "gzip": ("nncd_ray.matrix.prefilter.classical:ClassicalPrefilter", {"compressor": "gzip"}),
    "bz2": ("nncd_ray.matrix.prefilter.classical:ClassicalPrefilter", {"compressor": "bz2"}),
    "lzma": ("nncd_ray.matrix.prefilter.classical:ClassicalPrefilter", {"compressor": "lzma"}),
    "embed": ("nncd_ray.matrix.prefilter.embedding:EmbeddingPrefilter", {}),
}

DEFAULT_PREFILTER = "zstd"


def available() -> list[str]:
    """Names accepted by :func:`make_prefilter` and by ``--prefilter``."""
    return sorted(_REGISTRY)


def prefilter_class(name: str) -> type[Prefilter]:
    """The class registered under ``name``; an unknown name is a :class:`ConfigError`."""
    try:
        target, _ = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown prefilter {name!r}; choose one of: {', '.join(available())}"
        ) from None
    module_name, _, class_name = target.partition(":")
    cls: type[Prefilter] = getattr(importlib.import_module(module_name), class_name)
    return cls


def make_prefilter(name: str) -> Prefilter:
    """The prefilter registered under ``name``, built with its registered options."""
    cls = prefilter_class(name)
    return cls(**dict(_REGISTRY[name][1]))


__all__ = [
    "DEFAULT_PREFILTER",
    "Prefilter",
    "PrefilterJob",
    "PrefilterReader",
    "PrefilterSummary",
    "available",
    "make_prefilter",
    "prefilter_class",
]

"""Compressors behind one protocol, found by name in a lazy registry.

The registry maps the CLI's ``--compressor`` choices to ``module:Class`` strings, so that importing
``nncd_ray.scorers`` never imports torch; the LM backend loads only when it is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from nncd_ray.errors import UnknownCompressor
from nncd_ray.scorers.base import BaseScorer, Scorer, ScorerSpec, TileScores

# name -> "module:ClassName"; the keys are the CLI's --compressor choices
_REGISTRY: dict[str, str] = {
    "gzip": "nncd_ray.scorers.classical:GzipScorer",
    "bz2": "nncd_ray.scorers.classical:Bz2Scorer",
    "lzma": "nncd_ray.scorers.classical:LzmaScorer",
    "zstd": "nncd_ray.scorers.classical:ZstdScorer",
    "lm": "nncd_ray.scorers.lm:LMScorer",
    # a cheap deterministic stand-in (like lm-eval's dummy backend): runs the whole pipeline
    # without a model, and can inject actor crashes for fault tests
    "synthetic": "nncd_ray.scorers.synthetic:SyntheticScorer",
}

CLASSICAL = ("gzip", "bz2", "lzma", "zstd")


def available() -> list[str]:
    """Names accepted by :func:`make_scorer` and by ``--compressor``."""
    return sorted(_REGISTRY)


def scorer_class(name: str) -> type[BaseScorer]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UnknownCompressor(
            f"unknown compressor {name!r}; choose one of: {', '.join(available())}"
        ) from None
    module_name, _, class_name = target.partition(":")
    cls: type[BaseScorer] = getattr(importlib.import_module(module_name), class_name)
    return cls


def make_scorer(spec: ScorerSpec | str, **options: Any) -> BaseScorer:
    """Build a scorer from a spec (or a name plus keyword options)."""
    if isinstance(spec, str):
        spec = ScorerSpec(name=spec, options=options)
    elif options:
        spec = ScorerSpec(name=spec.name, options={**spec.options, **options})
    return scorer_class(spec.name)(**dict(spec.options))


__all__ = [
    "CLASSICAL",
    "BaseScorer",
    "Scorer",
    "ScorerSpec",
    "TileScores",
    "available",
    "make_scorer",
    "scorer_class",
]

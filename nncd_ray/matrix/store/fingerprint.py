"""What a store records about how it was computed, and how a resume is compared with it: the
documents' fingerprint, the software versions, and one human line per setting that differs."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nncd_ray import __version__

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus


# what a fingerprint key means when a store does not record it
DEFAULTS: dict[str, Any] = {"layout": "dense"}


def software_versions() -> dict[str, str]:
    """Versions of what computed the numbers, read without importing heavy packages."""
    versions = {"nncd_ray": __version__, "python": platform.python_version()}
    for package in ("zarr", "numpy", "ray", "torch", "transformers", "tokenizers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def corpus_fingerprint(corpus: Corpus) -> dict[str, Any]:
    """What the store records about one document set (hash covers ids, texts, labels and order)."""
    return {"n": len(corpus), "content_hash": corpus.content_hash()}


def _describe(key: str, value: Any, other: Any) -> str:
    """One side of a difference; for compressors, the name plus its settings (only the settings
    that differ when both sides are the same compressor)."""
    if key in ("compressor", "prefilter") and isinstance(value, Mapping):
        other = other if isinstance(other, Mapping) else {}
        name = value.get("compressor", value.get("name", "?"))
        same = name == other.get("compressor", other.get("name"))
        rest = " ".join(
            f"{k} {v}"
            for k, v in sorted(value.items())
            if k not in ("compressor", "name") and not (same and other.get(k) == v)
        )
        return f"{name} {rest}".strip()
    if key in ("rows", "cols") and isinstance(value, Mapping):
        digest = str(value.get("content_hash", "?"))[:12]
        return f"{value.get('n', '?')} documents (sha256 {digest}…)"
    return json.dumps(value, sort_keys=True)


def fingerprint_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Human lines ``"compressor gzip level 9, not bz2 level 6"`` for every top-level key of
    ``wanted`` whose value differs from ``stored``."""
    lines = []
    for key in sorted(wanted):
        # a store written before the key existed has its default (dense stores have no layout)
        have = json.loads(json.dumps(stored.get(key, DEFAULTS.get(key)), sort_keys=True))
        want = json.loads(json.dumps(wanted[key], sort_keys=True))
        if have != want:
            lines.append(f"{key} {_describe(key, have, want)}, not {_describe(key, want, have)}")
    return lines

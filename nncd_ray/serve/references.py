"""The references of a service: C(y) of each read from a matrix store of the same references and
compressor, with the store's fingerprint checked, instead of computed.

A store fits when its columns are these references (ids, texts, labels and order: the content
hash its ``config["cols"]`` records) and its compressor fingerprint equals the scorer's (model,
weights, tokenizer, dtype, truncation…). The first check needs no model, so ``nncd serve`` makes
it before starting anything; the second needs the loaded scorer, so each scorer replica makes it.
C(y) is read through :class:`~nncd_ray.matrix.store.reader.StoreReader` (every value checked);
a reference no done tile covers yet is refused (:class:`~nncd_ray.errors.IncompleteMatrix`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import IncompleteMatrix, StoreMismatch
from nncd_ray.matrix.store.fingerprint import corpus_fingerprint, fingerprint_differences
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.matrix.store.storage_errors import store_errors

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus


def _mismatch(url: str, differences: list[str]) -> StoreMismatch:
    return StoreMismatch(
        f"store {url} was computed with "
        + "; ".join(differences)
        + ": its C(y) are not those of this service's references and compressor; serve without "
        "--store (C(y) is then computed at start), or compute a store of these references with "
        "the same compressor settings"
    )


def check_store_references(
    url: str,
    references: Corpus,
    *,
    compressor: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> MatrixStore:
    """Open the store at ``url`` and refuse it unless its columns are ``references`` and, given
    ``compressor`` (a registry name), its compressor is that one
    (:class:`~nncd_ray.errors.StoreMismatch`). The compressor's settings are checked by
    :func:`stored_reference_bits` once a scorer is loaded."""
    with store_errors(url):
        store = MatrixStore.open(url, storage_options=storage_options)
    differences = fingerprint_differences(store.config, {"cols": corpus_fingerprint(references)})
    differences = [d.replace("cols ", "references ", 1) for d in differences]
    stored = store.config.get("compressor")
    stored_name = stored.get("compressor") if isinstance(stored, Mapping) else None
    if compressor is not None and stored_name != compressor:
        differences.append(f"compressor {stored_name}, not {compressor}")
    if differences:
        raise _mismatch(url, differences)
    return store


def stored_reference_bits(
    url: str,
    references: Corpus,
    scorer_fingerprint: Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> NDArray[np.float32]:
    """``(R,) float32`` C(y) of every reference from the store at ``url``, after checking that it
    holds these references computed with a scorer of ``scorer_fingerprint``."""
    store = check_store_references(url, references, storage_options=storage_options)
    differences = fingerprint_differences(store.config, {"compressor": dict(scorer_fingerprint)})
    if differences:
        raise _mismatch(url, differences)
    with store_errors(url):
        bits = StoreReader(store).col_bits
    missing = np.flatnonzero(np.isnan(bits))
    if missing.size:
        raise IncompleteMatrix(
            f"store {url} has C(y) of {bits.shape[0] - missing.size} of {bits.shape[0]} "
            f"references (the first missing: {references.ids[int(missing[0])]!r}); resume it "
            "with `nncd matrix` and the same settings, or serve without --store"
        )
    return np.asarray(bits, dtype=np.float32)


__all__ = ["check_store_references", "stored_reference_bits"]

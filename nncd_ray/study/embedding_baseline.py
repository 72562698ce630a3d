"""The study's baseline row: what a user would pick instead of NCD.

k-NN over ``1 − cosine`` of all-MiniLM-L6-v2 sentence embeddings (mean pooling, unit length; the
optional ``[embed]`` extra, :mod:`nncd_ray.matrix.prefilter.sentence_model`), with the same rule as
every NCD row (PROTOCOL.md: neighbours by distance then reference index, majority vote, ties to the
class whose nearest member is nearest). It is not a compressor: it has no bits per byte, and it is
never the study's "best compressor". The embeddings are kept in ``<out>/embed.npz`` with what they
were computed from, so a study run again reuses them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.knn.accumulator import KNNAccumulator
from nncd_ray.knn.labels import LabelCodec
from nncd_ray.knn.report import EvaluationReport
from nncd_ray.matrix.prefilter.sentence_model import (
    EmbeddingSettings,
    EmbeddingUnavailable,
    SentenceEmbedder,
    cosine_distances,
    embedding_model_dir,
)

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus

LABEL = "embed"
DESCRIPTION = "all-MiniLM-L6-v2 sentence embeddings, 1 − cosine (baseline, not NCD)"
# queries per block of distances
BLOCK_ROWS = 1024


def _key(settings: EmbeddingSettings, corpora: list[Corpus]) -> str:
    """What the cached embeddings were computed from: the model and the documents."""
    digest = hashlib.sha256(json.dumps(settings.fingerprint(), sort_keys=True).encode())
    for corpus in corpora:
        for text in corpus.texts:
            digest.update(text.encode("utf-8") + b"\0")
        digest.update(b"\1")
    return digest.hexdigest()


def _embeddings(
    queries: Corpus, refs: Corpus, cache: Path
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Unit embeddings of the queries and references, from ``cache`` when it holds them."""
    settings = EmbeddingSettings()
    key = _key(settings, [queries, refs])
    if cache.exists():
        with np.load(cache) as stored:
            if str(stored["key"]) == key:
                return stored["queries"], stored["refs"]
    embedder = SentenceEmbedder(settings)
    query_vectors = embedder.embed(queries.texts)
    ref_vectors = embedder.embed(refs.texts)
    np.savez(cache, key=np.array(key), queries=query_vectors, refs=ref_vectors)
    return query_vectors, ref_vectors


def embedding_report(
    queries: Corpus, refs: Corpus, ks: tuple[int, ...], out: Path
) -> EvaluationReport:
    """k-NN of ``queries`` against ``refs`` by embedding distance, as a k-NN report; raises
    :class:`EmbeddingUnavailable` (with the install hint) when the extra is missing."""
    started = time.perf_counter()
    embedding_model_dir()
    if refs.labels is None or queries.labels is None:
        raise EmbeddingUnavailable("the embedding baseline needs labelled queries and references")
    query_vectors, ref_vectors = _embeddings(queries, refs, out / f"{LABEL}.npz")
    codec = LabelCodec.from_labels(refs.labels, queries.labels)
    accumulator = KNNAccumulator(refs.labels, ks, codec)
    for start in range(0, len(queries), BLOCK_ROWS):
        block = cosine_distances(query_vectors[start : start + BLOCK_ROWS], ref_vectors)
        accumulator.add_block(block, overwrite_input=True)
    predicted = accumulator.predicted_codes()
    compressor: dict[str, Any] = {"compressor": LABEL, **EmbeddingSettings().fingerprint()}
    return EvaluationReport(
        store=str(out / f"{LABEL}.npz"),
        variant="1 - cosine",
        square=False,
        ks=accumulator.ks,
        n_rows=len(queries),
        n_queries=len(queries),
        n_refs=len(refs),
        results=tuple(accumulator.metrics(list(queries.labels))),
        compression={},
        compressor=compressor,
        skipped_rows=(),
        query_ids=tuple(queries.ids),
        query_rows=tuple(range(len(queries))),
        true_labels=tuple(queries.labels),
        predictions={k: tuple(codec.decode(codes)) for k, codes in predicted.items()},
        hubness=tuple(accumulator.hubness()),
        reference_ids=tuple(refs.ids),
        reference_labels=tuple(refs.labels),
        block_rows=BLOCK_ROWS,
        seconds=time.perf_counter() - started,
    )


__all__ = ["DESCRIPTION", "LABEL", "EmbeddingUnavailable", "embedding_report"]

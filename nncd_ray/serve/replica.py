"""The scorer deployment of the service (this module imports Ray Serve).

:class:`NCDScorer` (``--replicas`` of them, each with ``--gpus-per-replica`` GPUs) builds the
scorer once, gets C(y) of every reference (computed, or read from ``--store`` with its
fingerprint checked) and answers requests. Each request's documents are checked first (the
tokenizer refuses a document longer than the context under ``--truncation error``) and then go
one by one into the replica's :class:`~nncd_ray.serve.batcher.QueryBatcher`: documents of
concurrent callers are scored together, up to the batch size (``--max-batch``; auto fills the
LM's token budget), each batch one tile of the project's scorer
(:class:`~nncd_ray.serve.engine.QueryEngine`), formed when the scorer is free (so under load
batches are full; ``batcher`` says why not ``@serve.batch``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ray import serve

from nncd_ray.data.corpus import Corpus
from nncd_ray.errors import InputError
from nncd_ray.serve.answers import QueryScores, ReferenceIndex, ScorerReply
from nncd_ray.serve.batcher import QueryBatcher
from nncd_ray.serve.config import ServeConfig
from nncd_ray.serve.engine import QueryEngine
from nncd_ray.serve.queries import QueryRequest


@serve.deployment(name="NCDScorer")
class NCDScorer:
    """A scorer replica: the compressor, the references and C(y) of each (see the module doc)."""

    def __init__(self, config: ServeConfig, references: Corpus) -> None:
        if references.labels is None:
            raise InputError("the references have no labels; k-NN needs labelled references")
        self.config = config
        self.engine = QueryEngine(config.scorer, references.texts, variant=config.variant)
        self.fingerprint = self.engine.fingerprint()
        if config.store is not None:
            # Zarr loads only for a replica that reads a store
            from nncd_ray.serve.references import stored_reference_bits

            bits = stored_reference_bits(
                config.store,
                references,
                self.fingerprint,
                storage_options=config.storage_options,
            )
        else:
            bits = self.engine.reference_bits()
        self.index = ReferenceIndex(
            ids=references.ids, labels=references.labels, bits=bits, variant=config.variant
        )
        self.batch_size = config.batch_size(
            self.engine.token_budget, self.engine.reference_tokens()
        )
        self.batcher: QueryBatcher[QueryScores] = QueryBatcher(
            self._score, max_batch=self.batch_size, wait_s=config.batch_wait_s
        )

    def info(self) -> dict[str, Any]:
        """What ``GET /health`` shows about the replica that answered."""
        return {
            "references": len(self.index),
            "variant": self.config.variant,
            "k": self.config.k,
            "max_batch": self.batch_size,
            "device": self.engine.device(),
            "compressor": self.fingerprint,
            "reference_bits_from": "store" if self.config.store is not None else "computed",
            "pid": os.getpid(),
        }

    def references(self) -> dict[str, Any]:
        """``GET /references``: ids and labels in reference order."""
        return self.index.describe()

    async def answer(self, request: QueryRequest) -> ScorerReply:
        """Score the request's documents (batched with other callers') and answer them; a
        document the scorer cannot take refuses the whole request with a one-line reason."""
        try:
            await asyncio.to_thread(self.engine.check, request.texts)
        except InputError as exc:
            return ScorerReply(refused=str(exc).strip().splitlines()[0])
        scored = await asyncio.gather(*(self.batcher.submit(text) for text in request.texts))
        scores = QueryScores.concatenate([s for s, _ in scored])
        if request.endpoint == "classify":
            answers = self.index.classify(scores, request.k or self.config.k)
        else:
            answers = self.index.distances(scores, request.top)
        return ScorerReply(answers=tuple(answers), batch_sizes=tuple(n for _, n in scored))

    def _score(self, texts: list[str]) -> list[QueryScores]:
        """One batch (in a worker thread): the documents of concurrent requests, one tile of
        the scorer; one row of scores per document."""
        scores = self.engine.score(texts)
        return [scores.rows(i, i + 1) for i in range(len(texts))]


__all__ = ["NCDScorer"]

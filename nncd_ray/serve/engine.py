"""One scorer replica's compute: a batch of queries against every reference, through the
project's scorer (no re-implementation).

For the language model (:class:`~nncd_ray.scorers.lm.LMScorer`) a batch of B queries is one tile
of B rows × R reference columns: the scorer runs the B prefixes ``[b] x [e]`` (C(x) of each query
comes with them) and then every (query, reference) continuation against its query's cached prefix,
many queries per pass, passes sized by the token budget: the cross-row batching of the matrix
engine, fed by concurrent callers instead of a store. As in the matrix worker, only
``scorer.launch`` runs under the device lock (tokenising and planning, ``scorer.prepare``, and
reading the results back happen outside it), so two batches may be scored at once safely; the
replica's batcher runs one at a time, which keeps batches full under load. ``ncd-min`` adds the
tile with the references as prefixes (C(yx)).

Other compressors (gzip, …) go through the protocol's ``document_bits`` and ``pair_bits``.

Every code length is checked (finite, non-negative: :class:`~nncd_ray.errors.InvalidCodeLengths`
otherwise) and rounded to float32, the precision a matrix store keeps.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import InvalidCodeLengths
from nncd_ray.matrix.store.chunks import code_length_problem
from nncd_ray.scorers import BaseScorer, ScorerSpec, make_scorer
from nncd_ray.scorers.base import utf8_lengths
from nncd_ray.serve.answers import QueryScores


def _checked(name: str, values: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
    """``values`` as float32 bits, refused if any is NaN, infinite or negative."""
    problem = code_length_problem(np.asarray(values, dtype=np.float64))
    if problem is not None:
        raise InvalidCodeLengths(f"the scorer's {name} {problem}; the request is not answered")
    return np.asarray(values, dtype=np.float32)


class QueryEngine:
    """A scorer built once (in a replica's constructor), scoring queries against fixed references.

    Thread-safe: :meth:`score` may run in several threads at once (the device work is one batch
    at a time, under a lock).
    """

    def __init__(self, spec: ScorerSpec, references: Sequence[str], *, variant: str) -> None:
        self.scorer: BaseScorer = make_scorer(spec)
        self.references = tuple(references)
        self.variant = variant
        self._device = threading.Lock()
        prepare, launch = (
            getattr(self.scorer, "prepare", None),
            getattr(self.scorer, "launch", None),
        )
        # the LM splits a tile into host work and device work; classical compressors do not
        self._tiles = prepare is not None and launch is not None

    # ---------------------------------------------------------------- what the replica reports

    def fingerprint(self) -> dict[str, Any]:
        """The scorer's fingerprint: what a store of these references must have been made with."""
        return dict(self.scorer.fingerprint())

    @property
    def token_budget(self) -> int | None:
        """Tokens per forward pass of the LM (None for other compressors)."""
        budget = getattr(self.scorer, "token_budget", None)
        return int(budget) if isinstance(budget, int) else None

    def reference_tokens(self) -> int | None:
        """Tokens of all references together, after truncation (LM), else None: what one query's
        pairs cost the device."""
        encode = getattr(self.scorer, "encode", None)
        if encode is None:
            return None
        return sum(len(ids) for ids in encode(self.references))

    def device(self) -> str:
        """Where the scorer computes (``cpu``, ``cuda``)."""
        device = getattr(self.scorer, "device", None)
        return str(getattr(device, "type", "cpu"))

    # ---------------------------------------------------------------- scoring

    def check(self, texts: Sequence[str]) -> None:
        """Refuse documents the scorer cannot take (the LM tokenises them here, once: a document
        longer than the context under ``truncation="error"`` raises
        :class:`~nncd_ray.errors.DocumentTooLong`)."""
        self.scorer.scored_bytes(texts)

    def reference_bits(self) -> NDArray[np.float32]:
        """``(R,) float32`` C(y) of every reference, in bits (one batch of documents)."""
        with self._device:
            bits = self.scorer.document_bits(self.references)
        return _checked("C(y) of the references", bits)

    def score(self, texts: Sequence[str]) -> QueryScores:
        """Code lengths of the queries ``texts`` against every reference (see the module doc)."""
        scored = np.asarray(self.scorer.scored_bytes(texts), dtype=np.int64)
        truncated = scored < utf8_lengths(texts)
        if self._tiles:
            query_bits, pair_bits, reversed_bits = self._tile_scores(texts)
        else:
            query_bits, pair_bits, reversed_bits = self._protocol_scores(texts)
        return QueryScores(
            query_bits=_checked("C(x)", query_bits),
            pair_bits=_checked("C(xy)", pair_bits),
            reversed_bits=None if reversed_bits is None else _checked("C(yx)", reversed_bits),
            scored_bytes=scored,
            truncated=truncated,
        )

    def _run_tile(self, rows: Sequence[str], cols: Sequence[str], *, want_cols: bool) -> Any:
        """One tile through ``prepare`` (host), ``launch`` (device, locked) and ``result``."""
        scorer: Any = self.scorer
        prepared = scorer.prepare(rows, cols, want_cols=want_cols)
        with self._device:
            pending = scorer.launch(prepared)
        return pending.result()

    def _tile_scores(
        self, texts: Sequence[str]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64] | None]:
        # on the prefix-cached path the rows' C(x) comes with their prefixes; the other paths
        # score the rows' documents only when the tile wants the columns' too, so C(x) is then
        # a small tile of its own rather than R reference documents per batch
        cached = getattr(self.scorer, "path", None) == "prefix-cached"
        tile = self._run_tile(texts, self.references, want_cols=False)
        pair_bits = tile.pair_bits
        query_bits = tile.row_bits if cached else self._run_tile([], texts, want_cols=True).col_bits
        reversed_bits = None
        if self.variant == "ncd-min":
            reversed_bits = self._run_tile(self.references, texts, want_cols=False).pair_bits.T
        return query_bits, pair_bits, reversed_bits

    def _protocol_scores(
        self, texts: Sequence[str]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64] | None]:
        with self._device:
            query_bits = self.scorer.document_bits(texts)
            pair_bits = self.scorer.pair_bits(texts, self.references)
            reversed_bits = (
                self.scorer.pair_bits(self.references, texts).T
                if self.variant == "ncd-min"
                else None
            )
        return query_bits, pair_bits, reversed_bits


__all__ = ["QueryEngine"]

"""Answers from code lengths: NCD to every reference and the k-NN label (pure numpy, no Ray).

The NCD is :func:`nncd_ray.ncd.ncd_matrix` and the neighbours and the vote are
:func:`~nncd_ray.knn.neighbours.top_k_neighbours` and
:func:`~nncd_ray.knn.neighbours.vote_neighbours`
(``shared/bench/PROTOCOL.md``'s rule: neighbours in ``(distance, reference index)`` order, a tie
between classes to the tied class whose nearest member comes first). Code lengths are rounded to
float32 before the NCD, as a matrix store holds them, so a query answered here gets the NCD and
the neighbours that ``nncd matrix`` + ``nncd knn`` give it against the same references.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import InputError
from nncd_ray.knn.labels import LabelCodec
from nncd_ray.knn.neighbours import top_k_neighbours, vote_neighbours
from nncd_ray.ncd import ncd_matrix


@dataclass(frozen=True, kw_only=True)
class QueryScores:
    """Code lengths of a batch of B queries against the R references, in bits, float32 values.

    ``query_bits``: (B,) C(x); ``pair_bits``: (B, R) C(x y), query first; ``reversed_bits``:
    (B, R) C(y x), reference first (``ncd-min`` only, else None); ``scored_bytes``: (B,) int64
    UTF-8 bytes each C(x) covers; ``truncated``: (B,) bool, whether the compressor cut the query.
    """

    query_bits: NDArray[np.float32]
    pair_bits: NDArray[np.float32]
    reversed_bits: NDArray[np.float32] | None
    scored_bytes: NDArray[np.int64]
    truncated: NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.query_bits.shape[0])

    def rows(self, start: int, stop: int) -> QueryScores:
        """Queries ``[start, stop)`` of the batch."""
        part = slice(start, stop)
        return QueryScores(
            query_bits=self.query_bits[part],
            pair_bits=self.pair_bits[part],
            reversed_bits=None if self.reversed_bits is None else self.reversed_bits[part],
            scored_bytes=self.scored_bytes[part],
            truncated=self.truncated[part],
        )

    @staticmethod
    def concatenate(parts: Sequence[QueryScores]) -> QueryScores:
        """The queries of ``parts``, in order, as one batch."""
        reversed_parts = [p.reversed_bits for p in parts]
        return QueryScores(
            query_bits=np.concatenate([p.query_bits for p in parts]),
            pair_bits=np.concatenate([p.pair_bits for p in parts]),
            reversed_bits=None
            if any(r is None for r in reversed_parts)
            else np.concatenate([r for r in reversed_parts if r is not None]),
            scored_bytes=np.concatenate([p.scored_bytes for p in parts]),
            truncated=np.concatenate([p.truncated for p in parts]),
        )


@dataclass(frozen=True, kw_only=True)
class ScorerReply:
    """What a scorer replica sends back to the front end for one request."""

    # one answer per document of the request, in its order (JSON-able)
    answers: tuple[dict[str, Any], ...] = ()
    # the one-line reason the scorer refused a document (answered with HTTP 400), else None
    refused: str | None = None
    # per document: how many queries the scorer batch that scored it held
    batch_sizes: tuple[int, ...] = ()


def _number(value: float) -> float | None:
    """A JSON number; NaN (no defined distance) becomes null."""
    return None if math.isnan(value) else float(value)


class ReferenceIndex:
    """The references as the k-NN sees them: ids, labels and C(y) of each, in reference order.

    ``bits``: (R,) C(y) in bits (float32 values, as a store holds them).
    """

    def __init__(
        self,
        *,
        ids: Sequence[str],
        labels: Sequence[Hashable],
        bits: NDArray[np.floating[Any]],
        variant: str,
    ) -> None:
        if not len(ids) == len(labels) == int(np.shape(bits)[0]):
            raise InputError(f"{len(ids)} ids, {len(labels)} labels and {np.shape(bits)[0]} C(y)")
        self.ids = tuple(str(i) for i in ids)
        self.labels = tuple(labels)
        self.bits = np.asarray(bits, dtype=np.float32)
        self.variant = variant
        self.codec = LabelCodec.from_labels(self.labels)
        self.codes = self.codec.encode(self.labels)

    def __len__(self) -> int:
        return len(self.ids)

    def ncd(self, scores: QueryScores) -> NDArray[np.float64]:
        """``(B, R) float64`` NCD of each query to each reference under the service's variant."""
        return ncd_matrix(
            scores.query_bits,
            self.bits,
            scores.pair_bits,
            self.variant,
            pair_bits_reversed=scores.reversed_bits,
        )

    def _query_fields(self, scores: QueryScores, row: int) -> dict[str, Any]:
        bits = float(scores.query_bits[row])
        scored = int(scores.scored_bytes[row])
        return {
            "bits_per_byte": bits / scored if scored > 0 else None,
            "bits": bits,
            "scored_bytes": scored,
            "truncated": bool(scores.truncated[row]),
        }

    def _neighbours(
        self, indices: NDArray[np.int64], distances: NDArray[np.float64]
    ) -> list[dict[str, Any]]:
        return [
            {"id": self.ids[j], "label": self.labels[j], "ncd": _number(float(d))}
            for j, d in zip(indices.tolist(), distances.tolist(), strict=True)
            if j >= 0
        ]

    def classify(self, scores: QueryScores, k: int) -> list[dict[str, Any]]:
        """One answer per query: the majority label of its ``k`` nearest references, those
        references (id, label, NCD; nearest first) and the query's bits per byte."""
        indices, distances = top_k_neighbours(self.ncd(scores), k, overwrite_input=True)
        codes = vote_neighbours(indices, self.codes, [k], len(self.codec))[k]
        labels = self.codec.decode(codes)
        return [
            {
                "label": labels[row],
                "neighbours": self._neighbours(indices[row], distances[row]),
                **self._query_fields(scores, row),
            }
            for row in range(len(scores))
        ]

    def distances(self, scores: QueryScores, top: int | None) -> list[dict[str, Any]]:
        """One answer per query: its NCD to every reference in reference order (``top`` None),
        else its ``top`` nearest references as :meth:`classify` lists them."""
        ncd = self.ncd(scores)
        if top is None:
            return [
                {"ncd": [_number(v) for v in ncd[row].tolist()], **self._query_fields(scores, row)}
                for row in range(len(scores))
            ]
        indices, distances = top_k_neighbours(ncd, top, overwrite_input=True)
        return [
            {
                "neighbours": self._neighbours(indices[row], distances[row]),
                **self._query_fields(scores, row),
            }
            for row in range(len(scores))
        ]

    def describe(self) -> dict[str, Any]:
        """``GET /references``: ids and labels in reference order (the order of ``"ncd"``)."""
        return {"n": len(self), "ids": list(self.ids), "labels": list(self.labels)}


__all__ = ["QueryScores", "ReferenceIndex", "ScorerReply"]

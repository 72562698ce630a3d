"""k-NN block by block: classify row blocks of distances one after another, keeping only the
predicted codes and each reference's k-occurrence (so memory never holds the matrix)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nncd_ray.errors import InputError
from nncd_ray.knn.labels import LabelCodec
from nncd_ray.knn.neighbours import check_ks, k_occurrence, reference_neighbours, vote_neighbours
from nncd_ray.knn.statistics import Hubness, KNNMetrics, score_predictions


class KNNAccumulator:
    """Classifies row blocks one after another and keeps only the predicted codes.

    Memory: the reference codes plus ``(n_queries,)`` codes per ``k``; the distance blocks are not
    kept. ``codec`` fixes the label order (include the query labels in it to score).
    """

    def __init__(self, reference_labels: Sequence[object], ks: Iterable[int], codec: LabelCodec):
        self.codec = codec
        self.reference_codes = codec.encode(reference_labels)
        self.ks = check_ks(ks)
        self._blocks: dict[int, list[NDArray[np.int64]]] = {k: [] for k in self.ks}
        n_refs = int(self.reference_codes.shape[0])
        self._occurrence = {k: np.zeros(n_refs, dtype=np.int64) for k in self.ks}
        self._rows = 0

    def add_block(
        self,
        distances: ArrayLike,
        *,
        diagonal_offset: int | None = None,
        overwrite_input: bool = False,
    ) -> dict[int, NDArray[np.int64]]:
        """Classify a ``(B, n_refs)`` block; returns and records ``{k: (B,) codes}`` and counts
        each reference's k-occurrence (:meth:`hubness`)."""
        indices = reference_neighbours(
            distances,
            self.reference_codes,
            self.ks[-1],
            diagonal_offset=diagonal_offset,
            overwrite_input=overwrite_input,
        )
        codes = vote_neighbours(indices, self.reference_codes, self.ks, len(self.codec))
        n_refs = int(self.reference_codes.shape[0])
        for k, block in codes.items():
            self._blocks[k].append(block)
            self._occurrence[k] += k_occurrence(indices, k, n_refs)
        self._rows += int(indices.shape[0])
        return codes

    def hubness(self) -> list[Hubness]:
        """One :class:`Hubness` per ``k`` over the rows added so far."""
        return [Hubness.from_counts(self._occurrence[k], k, self._rows) for k in self.ks]

    def predicted_codes(self) -> dict[int, NDArray[np.int64]]:
        """``{k: (n_queries_so_far,) int64}`` in the order the blocks were added."""
        return {
            k: np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
            for k, blocks in self._blocks.items()
        }

    def metrics(self, true_labels: Sequence[object]) -> list[KNNMetrics]:
        """One :class:`KNNMetrics` per ``k`` against the true labels of the rows added."""
        true = self.codec.encode(true_labels)
        predicted = self.predicted_codes()
        if any(p.shape[0] != true.shape[0] for p in predicted.values()):
            raise InputError(
                f"{true.shape[0]} true labels for {next(iter(predicted.values())).shape[0]} queries"
            )
        return [score_predictions(true, predicted[k], self.codec, k) for k in self.ks]


def knn_classify(
    distances: ArrayLike,
    reference_labels: Sequence[object],
    ks: Iterable[int],
    *,
    leave_one_out: bool = False,
    block_rows: int = 1024,
) -> tuple[LabelCodec, dict[int, list[Hashable | None]]]:
    """Convenience over an in-memory ``(n_queries, n_refs)`` matrix: predicted labels per ``k``.

    ``leave_one_out``: the matrix is square (the references are the queries) and each query's own
    column is excluded.
    """
    matrix = np.asarray(distances)
    if matrix.ndim != 2:
        raise InputError(f"distances must be a (queries, references) matrix, not {matrix.shape}")
    if leave_one_out and matrix.shape[0] != matrix.shape[1]:
        raise InputError(f"leave-one-out needs a square matrix, not {matrix.shape}")
    codec = LabelCodec.from_labels(reference_labels)
    n_candidates = matrix.shape[1] - (1 if leave_one_out else 0)
    accumulator = KNNAccumulator(reference_labels, check_ks(ks, n_candidates), codec)
    for start in range(0, matrix.shape[0], max(1, block_rows)):
        accumulator.add_block(
            matrix[start : start + block_rows], diagonal_offset=start if leave_one_out else None
        )
    return codec, {k: codec.decode(c) for k, c in accumulator.predicted_codes().items()}

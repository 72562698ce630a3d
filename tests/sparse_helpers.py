"""Shared pieces of the candidate-pruning tests: what a sparse store must hold."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from nncd_ray.data.corpus import Corpus
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.ncd import ncd_matrix
from nncd_ray.scorers import ScorerSpec, make_scorer


def expected_candidates(prefilter: str, rows: Corpus, cols: Corpus, m: int) -> NDArray[np.int64]:
    """Each row's ``m`` nearest columns by a classical compressor's NCD, computed here without the
    engine: distance first, then column index."""
    scorer = make_scorer(ScorerSpec(name=prefilter))
    distances = ncd_matrix(
        scorer.document_bits(rows.texts),
        scorer.document_bits(cols.texts),
        scorer.pair_bits(rows.texts, cols.texts),
    )
    order = np.lexsort((np.broadcast_to(np.arange(len(cols)), distances.shape), distances))
    return np.asarray(order[:, :m], dtype=np.int64)


def assert_sparse_store_matches(
    path: str,
    spec: ScorerSpec,
    rows: Corpus,
    cols: Corpus,
    candidates: NDArray[np.int64],
) -> MatrixStore:
    """The sparse store is complete and holds, at each query's candidates, exactly (float32) what
    in-process scoring of those pairs gives; C(x) and C(y) of every document."""
    scorer = make_scorer(spec)
    store = MatrixStore.open(path)
    assert store.sparse and store.done_mask().all()
    reader = StoreReader(store)
    stored = np.asarray(store.array("candidates")[:], dtype=np.int64)
    np.testing.assert_array_equal(stored, candidates)
    dense = scorer.pair_bits(rows.texts, cols.texts)
    expected = np.take_along_axis(dense, candidates, axis=1).astype(np.float32)
    np.testing.assert_array_equal(reader.rows("pair_bits", 0, len(rows)), expected)
    if store.has_reversed:
        reversed_dense = scorer.pair_bits(cols.texts, rows.texts).T
        np.testing.assert_array_equal(
            reader.rows("pair_bits_reversed", 0, len(rows)),
            np.take_along_axis(reversed_dense, candidates, axis=1).astype(np.float32),
        )
    np.testing.assert_array_equal(
        reader.row_bits, scorer.document_bits(rows.texts).astype(np.float32)
    )
    np.testing.assert_array_equal(
        reader.col_bits, scorer.document_bits(cols.texts).astype(np.float32)
    )
    return store

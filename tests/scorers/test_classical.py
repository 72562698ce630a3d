"""Classical scorers give exactly 8 · len(compress(…)) of the reference library calls."""

from __future__ import annotations

import bz2
import gzip
import lzma
import random
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from nncd_ray.errors import ConfigError, InputError
from nncd_ray.scorers import make_scorer
from nncd_ray.scorers.classical import (
    Bz2Scorer,
    ClassicalScorer,
    GzipScorer,
    LzmaScorer,
    ZstdScorer,
)

Reference = Callable[[bytes], bytes]

REFERENCES: dict[str, tuple[Callable[[], ClassicalScorer], Reference]] = {
    "gzip": (GzipScorer, lambda data: gzip.compress(data, 9)),
    "bz2": (Bz2Scorer, lambda data: bz2.compress(data, 9)),
    "lzma": (LzmaScorer, lambda data: lzma.compress(data)),
    "zstd": (ZstdScorer, lambda data: zstandard.ZstdCompressor(level=19).compress(data)),
}

WORDS = ("the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "he", "was", "for")


def words(n_bytes: int, seed: int) -> str:
    """Deterministic English-like text of at least ``n_bytes`` bytes."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < n_bytes:
        word = rng.choice(WORDS) if rng.random() < 0.8 else f"{rng.randrange(10**6)}"
        parts.append(word)
        size += len(word) + 1
    return " ".join(parts)


SAMPLES = [
    "a",
    "b",
    "é",
    "日本語のテキスト",
    "emoji 🧪🔬 and combining e\u0301",
    "Fears for T N pension after talks Unions representing workers at Turner   Newall say",
    'backslash \\ quote " tab\tnewline\nend',
    words(300, 1),
    words(3000, 2),
]


def expected_bits(reference: Reference, data: bytes) -> float:
    return 8.0 * len(reference(data))


@pytest.fixture(params=sorted(REFERENCES))
def case(request: pytest.FixtureRequest) -> tuple[ClassicalScorer, Reference]:
    factory, reference = REFERENCES[request.param]
    return factory(), reference


def test_document_bits_equal_library(case: tuple[ClassicalScorer, Reference]) -> None:
    scorer, reference = case
    bits = scorer.document_bits(SAMPLES)
    assert bits.dtype == np.float64 and bits.shape == (len(SAMPLES),)
    assert bits.tolist() == [expected_bits(reference, s.encode("utf-8")) for s in SAMPLES]


def test_pair_bits_equal_library(case: tuple[ClassicalScorer, Reference]) -> None:
    scorer, reference = case
    rows, cols = SAMPLES[:6], SAMPLES[3:]
    pairs = scorer.pair_bits(rows, cols)
    assert pairs.shape == (len(rows), len(cols)) and pairs.dtype == np.float64
    for i, x in enumerate(rows):
        for j, y in enumerate(cols):
            assert pairs[i, j] == expected_bits(reference, x.encode() + b" " + y.encode())


def test_score_tile_is_consistent_and_counts_bytes(case: tuple[ClassicalScorer, Reference]) -> None:
    scorer, _ = case
    rows, cols = SAMPLES[:4], SAMPLES[4:]
    tile = scorer.score_tile(rows, cols)
    np.testing.assert_array_equal(tile.row_bits, scorer.document_bits(rows))
    np.testing.assert_array_equal(tile.col_bits, scorer.document_bits(cols))
    np.testing.assert_array_equal(tile.pair_bits, scorer.pair_bits(rows, cols))
    row_bytes = [len(t.encode()) for t in rows]
    col_bytes = [len(t.encode()) for t in cols]
    # every pair compresses x + b" " + y once; every document once more on its own
    naive = sum(x + 1 + y for x in row_bytes for y in col_bytes) + sum(row_bytes) + sum(col_bytes)
    assert tile.work_units == naive


def test_one_megabyte_documents(case: tuple[ClassicalScorer, Reference]) -> None:
    scorer, reference = case
    big, small = words(1_000_000, 3), "a short one"
    assert len(big.encode()) >= 1_000_000
    assert scorer.document_bits([big, small]).tolist() == [
        expected_bits(reference, big.encode()),
        expected_bits(reference, small.encode()),
    ]
    # gzip: the 1 MB row takes the prefix-copy path
    assert scorer.pair_bits([big], [small])[0, 0] == expected_bits(
        reference, (big + " " + small).encode()
    )


@pytest.mark.parametrize("level", range(10))
def test_gzip_matches_gzip_module_at_every_level(level: int) -> None:
    scorer = GzipScorer(level=level)
    scorer.prefix_copy_min_bytes = 0  # force the copy trick wherever it applies
    rows, cols = SAMPLES, SAMPLES[::-1]
    tile = scorer.score_tile(rows, cols)
    for i, x in enumerate(rows):
        assert tile.row_bits[i] == 8 * len(gzip.compress(x.encode(), level))
        for j, y in enumerate(cols):
            assert tile.pair_bits[i, j] == 8 * len(gzip.compress(f"{x} {y}".encode(), level))


def test_gzip_header_assumption() -> None:
    """zlib's gzip container is gzip.compress(mtime=0) byte for byte; mtime changes no length."""
    for text in SAMPLES:
        data = text.encode()
        assert zlib.compress(data, 9, 31) == gzip.compress(data, 9, mtime=0)
        assert len(gzip.compress(data, 9, mtime=1_700_000_000)) == len(zlib.compress(data, 9, 31))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.text(min_size=1, max_size=400), min_size=1, max_size=4),
    cols=st.lists(st.text(min_size=1, max_size=400), min_size=1, max_size=4),
    threshold=st.sampled_from([0, 64, 1024]),
)
def test_gzip_copy_trick_is_exact(rows: list[str], cols: list[str], threshold: int) -> None:
    scorer = GzipScorer()
    scorer.prefix_copy_min_bytes = threshold
    tile = scorer.score_tile(rows, cols)
    expected = [[8 * len(gzip.compress(f"{x} {y}".encode(), 9)) for y in cols] for x in rows]
    assert tile.pair_bits.tolist() == expected
    assert tile.row_bits.tolist() == [8 * len(gzip.compress(x.encode(), 9)) for x in rows]
    col_bytes = sum(len(y.encode()) for y in cols)
    expected_work = col_bytes  # C(y) of every column
    for x in rows:
        prefix = len(x.encode()) + 1
        if prefix >= threshold:  # copy path: x + b" " once, y per pair, C(x) as a by-product
            expected_work += prefix + col_bytes
        else:  # one-shot path: x + b" " + y per pair, and x once more for C(x)
            expected_work += prefix * len(cols) + col_bytes + prefix - 1
    assert tile.work_units == expected_work


def test_lzma_default_preset_and_explicit_preset() -> None:
    data = SAMPLES[-1].encode()
    assert LzmaScorer().document_bits([SAMPLES[-1]])[0] == 8 * len(lzma.compress(data))
    assert LzmaScorer(preset=1).document_bits([SAMPLES[-1]])[0] == 8 * len(
        lzma.compress(data, preset=1)
    )
    assert LzmaScorer().fingerprint()["preset"] == 6


def test_registry_builds_with_options() -> None:
    scorer = make_scorer("gzip", level=1)
    assert isinstance(scorer, GzipScorer) and scorer.level == 1
    assert make_scorer("lzma", preset=2).fingerprint()["preset"] == 2
    assert make_scorer("zstd").fingerprint()["level"] == 19


def test_fingerprints_name_settings_and_library_versions() -> None:
    assert GzipScorer().fingerprint()["zlib"] == zlib.ZLIB_RUNTIME_VERSION
    assert ZstdScorer().fingerprint()["zstandard"] == zstandard.__version__
    assert GzipScorer(1).fingerprint() != GzipScorer(9).fingerprint()
    names = {factory().fingerprint()["compressor"] for factory, _ in REFERENCES.values()}
    assert names == set(REFERENCES)
    for factory, _ in REFERENCES.values():
        print_ = factory().fingerprint()
        assert print_["pair"] == "x + b' ' + y"
        assert any(key in print_ for key in ("zlib", "libbz2", "liblzma", "libzstd"))


@pytest.mark.parametrize(
    ("factory", "value"),
    [
        (lambda v: GzipScorer(level=v), 10),
        (lambda v: GzipScorer(level=v), True),
        (lambda v: GzipScorer(level=v), "9"),
        (lambda v: Bz2Scorer(level=v), 0),
        (lambda v: LzmaScorer(preset=v), 10),
        (lambda v: ZstdScorer(level=v), 23),
    ],
)
def test_invalid_levels_are_config_errors(
    factory: Callable[[object], object], value: object
) -> None:
    with pytest.raises(ConfigError, match="must be an integer"):
        factory(value)


def test_unencodable_text_is_input_error() -> None:
    with pytest.raises(InputError, match="document number 1"):
        GzipScorer().document_bits(["fine", "lone \ud800 surrogate"])


def test_empty_tile_shapes() -> None:
    tile = Bz2Scorer().score_tile(["x"], [])
    assert tile.pair_bits.shape == (1, 0) and tile.col_bits.shape == (0,)

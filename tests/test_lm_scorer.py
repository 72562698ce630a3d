"""LMScorer against a plain full-sequence forward pass, on tiny locally built models (CPU, fast)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from nncd_ray.errors import ConfigError, DocumentTooLong, InputError, ModelNotFound
from nncd_ray.scorers import make_scorer
from nncd_ray.scorers.lm import LMScorer
from nncd_ray.scorers.lm.plan import batch_order

ROWS = [
    "Stocks fell sharply on Wall Street.",
    "x",
    "The quick brown fox jumps over the lazy dog, again and again, until the dog finally "
    "wakes up and chases the fox across the whole of the long green field.",
    "Café, naïve, 日本語 — unicode survives byte-level BPE.",
]
COLS = [
    "A second team sets a launch date for human spaceflight.",
    "ok",
    "Oil prices rose for the third day as traders worried about supplies from the Gulf of "
    "Mexico after the storm, and refiners raised their forecasts for the winter.",
    "Sox win.",
    "   leading spaces and\nnew lines\t",
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a shared CPU every op of a multi-threaded
    forward waits for a descheduled thread (10 s quiet, 80 s at load 5 with 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    path: Path = request.getfixturevalue(f"tiny_{request.param}_dir")
    return path


@pytest.fixture(scope="module")
def cached(model_dir: Path) -> LMScorer:
    # a small budget forces several prefix and column batches of mixed lengths
    return LMScorer(str(model_dir), device="cpu", token_budget=48)


@pytest.fixture(scope="module")
def naive(model_dir: Path) -> LMScorer:
    return LMScorer(str(model_dir), device="cpu", token_budget=48, prefix_cache=False)


def reference_bits(scorer: LMScorer, tokens: list[int], start: int = 1) -> float:
    """Σ −log2 p of tokens[start:] from one unpadded, uncached full forward pass."""
    with torch.inference_mode():
        logits = scorer.model(torch.tensor([tokens])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    positions = torch.arange(start - 1, len(tokens) - 1)
    chosen = logprobs[positions, torch.tensor(tokens[start:])]
    return float(-chosen.sum() / math.log(2))


def ids(scorer: LMScorer, text: str) -> list[int]:
    return list(scorer.tokenizer(text, add_special_tokens=False).input_ids)


def test_tile_matches_full_forward(cached: LMScorer) -> None:
    b, e = cached.loaded.bos_id, cached.loaded.eos_id
    tile = cached.score_tile(ROWS, COLS)
    assert tile.pair_bits.shape == (len(ROWS), len(COLS))
    assert tile.pair_bits.dtype == np.float64
    for i, x in enumerate(ROWS):
        assert tile.row_bits[i] == pytest.approx(
            reference_bits(cached, [b, *ids(cached, x), e]), abs=1e-3
        )
        for j, y in enumerate(COLS):
            full = [b, *ids(cached, x), e, *ids(cached, y), e]
            assert tile.pair_bits[i, j] == pytest.approx(reference_bits(cached, full), abs=1e-3)
    for j, y in enumerate(COLS):
        assert tile.col_bits[j] == pytest.approx(
            reference_bits(cached, [b, *ids(cached, y), e]), abs=1e-3
        )
    assert tile.work_units > 0


def test_pair_is_prefix_plus_conditional(cached: LMScorer) -> None:
    b, e = cached.loaded.bos_id, cached.loaded.eos_id
    pair = cached.pair_bits(ROWS, COLS)
    row_bits = cached.document_bits(ROWS)
    for i, x in enumerate(ROWS):
        prefix = [b, *ids(cached, x), e]
        for j, y in enumerate(COLS):
            conditional = reference_bits(cached, [*prefix, *ids(cached, y), e], start=len(prefix))
            assert pair[i, j] == pytest.approx(row_bits[i] + conditional, abs=1e-3)
            assert conditional > 0


def test_naive_equals_cached(cached: LMScorer, naive: LMScorer) -> None:
    fast, slow = cached.score_tile(ROWS, COLS), naive.score_tile(ROWS, COLS)
    np.testing.assert_allclose(fast.pair_bits, slow.pair_bits, atol=1e-3, rtol=0)
    np.testing.assert_allclose(fast.row_bits, slow.row_bits, atol=1e-3, rtol=0)
    np.testing.assert_allclose(fast.col_bits, slow.col_bits, atol=1e-3, rtol=0)
    # the cache saves the prefix tokens of every pair
    assert fast.work_units < slow.work_units
    np.testing.assert_allclose(
        naive.pair_bits(ROWS[:2], COLS[:2]), slow.pair_bits[:2, :2], atol=1e-3
    )


def test_budget_and_batching_do_not_change_numbers(model_dir: Path, cached: LMScorer) -> None:
    roomy = LMScorer(str(model_dir), device="cpu", token_budget=100_000)
    np.testing.assert_allclose(
        roomy.pair_bits(ROWS, COLS), cached.pair_bits(ROWS, COLS), atol=1e-3, rtol=0
    )
    assert roomy.fingerprint() == cached.fingerprint()
    single = np.array([[cached.pair_bits([x], [y])[0, 0] for y in COLS[:2]] for x in ROWS[1:3]])
    np.testing.assert_allclose(single, cached.pair_bits(ROWS[1:3], COLS[:2]), atol=1e-3, rtol=0)


def test_empty_sides(cached: LMScorer) -> None:
    assert cached.pair_bits([], COLS).shape == (0, len(COLS))
    tile = cached.score_tile(ROWS[:2], [])
    assert tile.pair_bits.shape == (2, 0)
    assert tile.col_bits.shape == (0,)
    assert cached.document_bits([]).shape == (0,)


def test_truncation_recorded_and_enforced(model_dir: Path) -> None:
    long_text = " ".join(f"word{i}" for i in range(200))
    scorer = LMScorer(str(model_dir), device="cpu", max_doc_tokens=20)
    assert scorer.fingerprint()["max_doc_tokens"] == 20
    assert scorer.fingerprint()["truncation"] == "truncate"
    assert len(scorer.encode([long_text])[0]) == 20
    assert scorer.counters.documents_truncated == 1
    # only the first 20 tokens count: appending text changes nothing
    bits = scorer.document_bits([long_text, long_text + " and more words at the end"])
    assert bits[0] == pytest.approx(bits[1], abs=1e-6)
    assert scorer.counters.documents_truncated == 3
    pair = scorer.pair_bits([long_text], [long_text + " tail"])
    assert pair[0, 0] == pytest.approx(scorer.pair_bits([long_text], [long_text])[0, 0], abs=1e-3)

    strict = LMScorer(str(model_dir), device="cpu", max_doc_tokens=20, truncation="error")
    assert strict.fingerprint()["truncation"] == "error"
    assert strict.fingerprint() != scorer.fingerprint()
    strict.document_bits(["short enough"])
    with pytest.raises(DocumentTooLong, match="document number 1"):
        strict.pair_bits(["short"], ["fine", long_text])


def test_default_truncation_fits_a_pair(cached: LMScorer) -> None:
    context = cached.loaded.context_tokens
    assert cached.max_doc_tokens == (context - 3) // 2
    huge = "lorem ipsum dolor sit amet " * 200
    tile = cached.score_tile([huge], [huge, "short"])
    assert np.isfinite(tile.pair_bits).all()


@pytest.mark.parametrize(
    "bad",
    [[""], ["fine", ""], ["bad \ud800 surrogate"], [b"bytes"], [None], "a single string"],
)
def test_invalid_input(cached: LMScorer, bad: object) -> None:
    with pytest.raises(InputError):
        cached.document_bits(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        cached.pair_bits(["ok"], bad)  # type: ignore[arg-type]


def test_bad_options(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        LMScorer(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(ModelNotFound):
        make_scorer("lm", model=str(tmp_path), device="cpu")  # exists, but no config.json
    with pytest.raises(ConfigError, match="truncation"):
        LMScorer(str(model_dir), device="cpu", truncation="drop")
    with pytest.raises(ConfigError, match="token_budget"):
        LMScorer(str(model_dir), device="cpu", token_budget=0)
    with pytest.raises(ConfigError, match="token_budget"):
        LMScorer(str(model_dir), device="cpu", token_budget="big")
    with pytest.raises(ConfigError, match="max_doc_tokens"):
        LMScorer(str(model_dir), device="cpu", max_doc_tokens=10_000)


def test_bf16_weights_float32_logsoftmax(model_dir: Path, cached: LMScorer) -> None:
    scorer = make_scorer("lm", model=str(model_dir), device="cpu", dtype="bf16")
    assert isinstance(scorer, LMScorer)
    assert next(scorer.model.parameters()).dtype == torch.bfloat16
    assert scorer.fingerprint()["dtype"] == "bfloat16"
    low = scorer.score_tile(ROWS[:2], COLS[:3])
    high = cached.score_tile(ROWS[:2], COLS[:3])
    assert low.pair_bits.dtype == np.float64
    np.testing.assert_allclose(low.pair_bits, high.pair_bits, rtol=0.05)
    np.testing.assert_allclose(low.row_bits, high.row_bits, rtol=0.05)


def test_batch_order_respects_budget() -> None:
    lengths = np.array([5, 1, 9, 3, 3, 7, 2, 30])
    batches = batch_order(lengths, None, 12)
    assert sorted(int(i) for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 12
    flat = [int(lengths[i]) for batch in batches for i in batch]
    assert flat == sorted(flat)
    assert [30] in [lengths[batch].tolist() for batch in batches]  # too long: alone


def test_batch_order_bounds_prefix_slots() -> None:
    widths = np.array([4, 4, 4, 4])
    # 4 items of width 4 fit a budget of 16 tokens; with 32-token prefixes only 2 fit the
    # 4 × 16 prefix slots a pass may attend to
    assert len(batch_order(widths, None, 16, overhead=0)) == 1
    with_prefix = batch_order(widths, np.full(4, 32), 16, overhead=0)
    assert [len(b) for b in with_prefix] == [2, 2]


def test_batch_order_minimises_padding() -> None:
    lengths = np.array([10] * 8 + [100] * 2)
    batches = batch_order(lengths, None, 1000, overhead=0.001)
    # short and long items are not padded together although the budget would allow it
    assert sorted(sorted(lengths[b].tolist()) for b in batches) == [[10] * 8, [100, 100]]
    assert batch_order(np.array([], dtype=np.int64), None, 100) == []
    assert [b.tolist() for b in batch_order(np.array([5, 1, 9]), None, 0)] == [[1], [0], [2]]


def test_cache_keyword_follows_the_installed_transformers(cached: LMScorer) -> None:
    """transformers 5.24 renamed forward's ``past_key_values`` to ``cache``; both spellings of
    model and output are handled, and the installed model gets the one its forward takes."""
    import inspect

    from nncd_ray.scorers.lm.loading import cache_argument, output_cache

    class New:
        def forward(self, input_ids=None, cache=None, use_cache=None): ...

    class Old:
        def forward(self, input_ids=None, past_key_values=None): ...

    assert cache_argument(New()) == "cache" and cache_argument(Old()) == "past_key_values"
    taken = inspect.signature(cached.model.forward).parameters
    assert cache_argument(cached.model) in taken

    class OldOutput:
        past_key_values = "old"

    assert output_cache({"cache": "new", "logits": 0}) == "new"
    assert output_cache(OldOutput()) == "old"
    assert output_cache({"logits": 0}) is None


@pytest.mark.parametrize("reverse", [False, True], ids=["x-then-y", "y-then-x"])
@pytest.mark.parametrize("prefix_cache", [True, False], ids=["prefix-cached", "naive"])
def test_candidates_in_one_tile_equal_the_dense_tile(
    model_dir: Path, prefix_cache: bool, reverse: bool
) -> None:
    """A sparse store's tile: each row its own candidate columns (repeats allowed), one tile's
    passes for all rows; the same numbers as the dense tile's, and on the cached path in fewer
    passes than a call per row (which runs each row's prefix and continuations apart)."""
    scorer = LMScorer(str(model_dir), device="cpu", prefix_cache=prefix_cache)
    candidates = np.array([[2, 0], [1, 1], [4, 3], [0, 4]])
    dense = scorer.score_tile(COLS, ROWS).pair_bits.T if reverse else scorer.pair_bits(ROWS, COLS)
    before = scorer.counters.forward_passes
    sparse = scorer.score_candidates(ROWS, COLS, candidates, reverse=reverse)
    one_tile = scorer.counters.forward_passes - before
    assert sparse.pair_bits.shape == candidates.shape
    np.testing.assert_allclose(
        sparse.pair_bits, dense[np.arange(len(ROWS))[:, None], candidates], atol=1e-4, rtol=0
    )
    before = scorer.counters.forward_passes
    for i, row in enumerate(ROWS):
        cols = [COLS[j] for j in candidates[i]]
        scorer.pair_bits(cols, [row]) if reverse else scorer.pair_bits([row], cols)
    per_row = scorer.counters.forward_passes - before
    assert one_tile < per_row if prefix_cache else one_tile <= per_row

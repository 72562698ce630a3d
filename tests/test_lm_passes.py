"""How the LM scorer spends forward passes: cross-row batching, pass counts, no host round
trips, out-of-memory back-off and the prepare/launch split (CPU, tiny models)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from paths import AGNEWS_CSV, needs_agnews

from nncd_ray.data.protocols import load_protocol
from nncd_ray.errors import ConfigError
from nncd_ray.scorers.lm import LMScorer
from nncd_ray.scorers.lm import passes as lm_passes
from nncd_ray.scorers.lm.devices import attention_kernels
from nncd_ray.scorers.lm.loading import embedded_model_dir
from nncd_ray.testing.tiny_models import build_tiny_model

AGNEWS = AGNEWS_CSV
ROWS = ["Stocks fell sharply on Wall Street.", "x", "Oil rose for a third day as traders worried."]
COLS = ["A second team sets a launch date.", "ok", "Sox win in overtime.", "New chip ships."]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def news_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with the embedded model's tokenizer (so AG News has its real token counts)."""
    path: Path = build_tiny_model(
        tmp_path_factory.mktemp("news"),
        arch="llama",
        n_layer=1,
        n_embd=32,
        n_head=2,
        n_positions=512,
        tokenizer_dir=embedded_model_dir(),
    )
    return path


@needs_agnews
def test_a_tile_takes_few_passes(news_model: Path) -> None:
    """A 64 × 64 agnews tile at a 65,536-token budget: rows, columns and all 4,096 pairs in at
    most 1.5 × (model tokens / 65,536) + 2 passes (c8ebf8c took 197, one prefix row at a time)."""
    split = load_protocol("agnews-small", str(AGNEWS))
    rows, cols = list(split.queries.texts[:64]), list(split.refs.texts[:64])
    scorer = LMScorer(str(news_model), device="cpu", token_budget=65536)
    scorer.score_tile(rows, cols)
    passes, tokens = scorer.counters.forward_passes, scorer.counters.model_tokens
    assert passes <= 1.5 * tokens / 65536 + 2
    assert tokens > 65536 * 3  # the tile is big enough for the bound to mean something


def test_cross_row_batches_equal_one_item_per_pass(news_model: Path) -> None:
    batched = LMScorer(str(news_model), device="cpu", token_budget=65536)
    single = LMScorer(str(news_model), device="cpu", token_budget=1)
    wide, narrow = batched.score_tile(ROWS, COLS), single.score_tile(ROWS, COLS)
    np.testing.assert_allclose(wide.pair_bits, narrow.pair_bits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(wide.row_bits, narrow.row_bits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(wide.col_bits, narrow.col_bits, atol=1e-4, rtol=0)
    assert batched.counters.forward_passes == 2  # documents, then every continuation
    assert single.counters.forward_passes == len(ROWS) + len(COLS) + len(ROWS) * len(COLS)


SYNCHRONISING = ("item", "tolist", "cpu", "numpy", "__bool__", "nonzero", "__int__", "__float__")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2", "mistral"])
def test_no_host_round_trip_inside_a_pass(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing in a pass reads a tensor back to Python (on a GPU each such read waits for the
    device): no .item(), .cpu(), bool() of a tensor, boolean-mask nonzero, in our code or the
    model's. The one read of a tile is after its last pass (``tests/test_lm_gpu.py`` checks
    the same on CUDA with its sync debug mode)."""
    path = build_tiny_model(tmp_path, arch=arch, sliding_window=8 if arch == "mistral" else None)
    scorer = LMScorer(str(path), device="cpu", token_budget=64)
    reads: list[str] = []
    run = lm_passes.PassRunner.run

    def guarded(self: Any, *args: Any, **kwargs: Any) -> None:
        originals = {name: getattr(torch.Tensor, name) for name in SYNCHRONISING}

        def recorder(name: str) -> Callable[..., Any]:
            def read(tensor: torch.Tensor, *a: Any, **k: Any) -> Any:
                reads.append(name)
                return originals[name](tensor, *a, **k)

            return read

        for name in SYNCHRONISING:
            monkeypatch.setattr(torch.Tensor, name, recorder(name))
        try:
            run(self, *args, **kwargs)
        finally:
            for name, original in originals.items():
                monkeypatch.setattr(torch.Tensor, name, original)

    monkeypatch.setattr(lm_passes.PassRunner, "run", guarded)
    scorer.score_tile(ROWS, COLS)
    assert scorer.counters.forward_passes > 2
    assert reads == []


def test_out_of_memory_halves_the_budget_and_goes_on(
    news_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = LMScorer(str(news_model), device="cpu", token_budget=4096).score_tile(ROWS, COLS)
    scorer = LMScorer(str(news_model), device="cpu", token_budget=4096)
    run = lm_passes.PassRunner.run
    calls = {"n": 0}

    def failing_once(self: Any, plan: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # mid-tile: a document pass already added to the accumulator
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        run(self, plan, *args, **kwargs)

    monkeypatch.setattr(lm_passes.PassRunner, "run", failing_once)
    tile = scorer.score_tile(ROWS, COLS)
    assert scorer.token_budget == 2048 and scorer.counters.oom_backoffs == 1
    # the tile started again from scratch: nothing counted twice
    np.testing.assert_allclose(tile.pair_bits, reference.pair_bits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(tile.row_bits, reference.row_bits, atol=1e-4, rtol=0)
    assert scorer.stats()["oom_backoffs"] == 1


def test_out_of_memory_at_the_smallest_budget_is_raised(
    news_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer = LMScorer(str(news_model), device="cpu", token_budget=256)

    def always(self: Any, *args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(lm_passes.PassRunner, "run", always)
    with pytest.raises(torch.OutOfMemoryError):
        scorer.score_tile(ROWS, COLS)


def test_prepare_then_launch_is_score_tile(news_model: Path) -> None:
    scorer = LMScorer(str(news_model), device="cpu", token_budget=512)
    prepared = scorer.prepare(ROWS, COLS)
    assert scorer.counters.forward_passes == 0  # preparing is host work only
    pending = scorer.launch(prepared)
    tile, again = pending.result(), scorer.score_tile(ROWS, COLS)
    np.testing.assert_allclose(tile.pair_bits, again.pair_bits, atol=1e-6, rtol=0)
    assert tile.work_units == again.work_units > 0
    pairs_only = scorer.launch(scorer.prepare(ROWS, COLS, want_cols=False)).result()
    np.testing.assert_allclose(pairs_only.pair_bits, tile.pair_bits, atol=1e-4, rtol=0)


def test_scored_bytes_cover_the_kept_tokens(news_model: Path) -> None:
    scorer = LMScorer(str(news_model), device="cpu", max_doc_tokens=8)
    long_text = "Café " + " ".join(f"word{i}" for i in range(100))
    short, cut = scorer.scored_bytes(["ok then", long_text])
    assert short == len(b"ok then")
    kept = scorer.tokenizer.decode(scorer.encode([long_text])[0])
    assert cut == len(kept.encode("utf-8")) < len(long_text.encode("utf-8"))


def test_half_precision_records_its_batch_plan(news_model: Path) -> None:
    """bf16 rounding depends on batch shapes, so in bf16 the token budget and path are part of
    the fingerprint (a resumed store never mixes tiles planned differently); in float32 they
    change code lengths by rounding only and are not."""
    small = LMScorer(str(news_model), device="cpu", dtype="bf16", token_budget=256)
    large = LMScorer(str(news_model), device="cpu", dtype="bf16", token_budget=8192)
    plan = small.fingerprint()["batch_plan"]
    assert plan["token_budget"] == 256 and plan["path"] == "prefix-cached"
    assert plan["device"] == "cpu" and small.fingerprint()["logits"] == "float32"
    assert small.fingerprint() != large.fingerprint()
    full = [LMScorer(str(news_model), device="cpu", token_budget=b) for b in (256, 8192)]
    assert full[0].fingerprint() == full[1].fingerprint()
    assert "batch_plan" not in full[0].fingerprint()


def test_half_precision_does_not_shrink_its_budget(
    news_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer = LMScorer(str(news_model), device="cpu", dtype="bf16", token_budget=4096)

    def out_of_memory(self: Any, *args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(lm_passes.PassRunner, "run", out_of_memory)
    with pytest.raises(ConfigError, match="--token-budget 2048"):
        scorer.score_tile(ROWS, COLS)
    assert scorer.token_budget == 4096


def test_embedded_model_is_float32_everywhere() -> None:
    """The default model runs in float32 on any device (dtype auto), so a GPU gives the CPU's
    code lengths and k-NN; bf16 would save nothing at 4.2 M parameters."""
    scorer = LMScorer(None, device="cpu")
    assert scorer.fingerprint()["dtype"] == "float32"
    assert next(scorer.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefix_layer_gathers_whole_words(dtype: torch.dtype) -> None:
    """A continuation's keys are its row's last ``width`` prefix slots then its own keys, read
    from the slot-major store as 8-byte words, with the strides of a model's projections."""
    from nncd_ray.scorers.lm.attention import PrefixLayer, as_words

    rows, slots, room, heads, dim = 3, 5, 4, 2, 8
    store_k = torch.randn(rows, slots + room, heads, dim).to(dtype)
    store_v = torch.randn(rows, slots + room, heads, dim).to(dtype)
    assert as_words(store_k).dtype == torch.int64
    assert as_words(store_k[..., :3].contiguous()).dtype == dtype  # no wider word tiles 3 values
    pick = torch.tensor([2, 0, 2, 1])
    width, new = 3, 2
    layer = PrefixLayer(store_k, store_v, rows=pick, slots=slots, width=width)
    own_k = torch.randn(len(pick), new, heads, dim).to(dtype).transpose(1, 2)  # as projections
    own_v = torch.randn(len(pick), new, heads, dim).to(dtype).transpose(1, 2)
    keys, values = layer.update(own_k, own_v)
    assert keys.shape == (len(pick), heads, width + new, dim)
    for got, store, own in ((keys, store_k, own_k), (values, store_v, own_v)):
        expected = torch.cat([store[pick, slots - width : slots].transpose(1, 2), own], dim=2)
        assert torch.equal(got, expected)
    assert layer.get_seq_length() == width
    with pytest.raises(ValueError, match="do not fit"):
        layer.update(*(torch.zeros(len(pick), heads, room + 1, dim, dtype=dtype),) * 2)


def test_cuda_attention_kernels_leave_out_cudnn_and_restore_torchs_choice() -> None:
    cuda = torch.backends.cuda
    before = (cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled())
    with attention_kernels(torch.device("cuda")):
        assert not cuda.cudnn_sdp_enabled()
        assert cuda.flash_sdp_enabled() and cuda.mem_efficient_sdp_enabled()
    after = (cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled())
    assert after == before
    with attention_kernels(torch.device("cpu")):  # nothing to choose on a CPU
        assert cuda.cudnn_sdp_enabled() == before[0]


@pytest.mark.parametrize("arch", ["gpt2", "gemma2"])  # gemma2: soft-capped, logits go back
@pytest.mark.parametrize("prefix_cache", [True, False], ids=["prefix-cached", "naive"])
def test_a_padded_head_gives_the_vocabularys_code_lengths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, prefix_cache: bool
) -> None:
    """The GPU's head padded to a multiple of 128 columns (here forced on the CPU) scores the
    model's own vocabulary: the padding's zero rows never enter a −ln p."""
    from nncd_ray.scorers.lm import head as lm_head

    model = build_tiny_model(tmp_path, arch=arch, vocab_size=300, n_layer=2)  # type: ignore[arg-type]
    plain = LMScorer(str(model), device="cpu", dtype="fp32", prefix_cache=prefix_cache)
    monkeypatch.setattr(lm_head, "PADDED_HEAD_DEVICES", ("cuda", "cpu"))
    padded = LMScorer(str(model), device="cpu", dtype="fp32", prefix_cache=prefix_cache)
    assert plain.head is not None and padded.head is not None
    vocab = padded.head.vocab
    assert vocab % lm_head.HEAD_COLUMN_MULTIPLE and plain.head._padded is None
    assert padded.head._padded is not None
    assert padded.head._padded[0].shape[0] == -(-vocab // 128) * 128
    assert padded.head.fused == (arch == "gpt2")
    expected, got = plain.score_tile(ROWS, COLS), padded.score_tile(ROWS, COLS)
    for field in ("row_bits", "col_bits", "pair_bits"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), atol=1e-4)

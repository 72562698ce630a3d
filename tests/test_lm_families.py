"""The model families users bring: every path of the LM scorer against an unpadded full forward.

Tiny random models of each family are built locally (``nncd_ray.testing.tiny_models``); the
sliding-window families get a 48-token window, shorter than a pair, so the cached prefix and the
continuation straddle the window (the case that was wrong before: 0.02 bits for Mistral, 2.3 for
Gemma 2, 2.5 for Gemma 3). Reference: ``[b] x [e] y [e]`` through the model alone, one sequence,
no padding, the model's own masks and logits (float64 log-softmax).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from lm_samples import COLS, ROWS

from nncd_ray.scorers.lm import LMScorer
from nncd_ray.testing.tiny_models import ARCHITECTURES, build_tiny_model

WINDOW = 48
SLIDING = {"mistral", "phi3", "gemma2", "gemma3"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = build_tiny_model(tmp_path_factory.mktemp("tokenizer"), vocab_size=400)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Callable[[str], Path]:
    """The tiny model of a family, built on first use."""
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny_model(
                tmp_path_factory.mktemp(arch),
                arch=arch,  # type: ignore[arg-type]
                n_layer=4 if arch in ("gemma2", "gemma3") else 2,
                n_embd=64,
                n_head=4,
                n_positions=512,
                tokenizer_dir=tokenizer_dir,
                sliding_window=WINDOW if arch in SLIDING else None,
                seed=3,
            )
        return built[arch]

    return get


def reference_bits(model: torch.nn.Module, tokens: list[int]) -> float:
    """Σ −log2 p of tokens[1:] from one unpadded, uncached forward pass of the model alone."""
    with torch.inference_mode():
        logits = model(torch.tensor([tokens])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = logprobs[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])]
    return float(-chosen.sum() / math.log(2))


def largest_error(scorer: LMScorer) -> float:
    b, e = scorer.loaded.bos_id, scorer.loaded.eos_id
    ids = scorer.encode(ROWS + COLS)
    rows, cols = ids[: len(ROWS)], ids[len(ROWS) :]
    tile = scorer.score_tile(ROWS, COLS)
    errors = [
        abs(tile.pair_bits[i, j] - reference_bits(scorer.model, [b, *x, e, *y, e]))
        for i, x in enumerate(rows)
        for j, y in enumerate(cols)
    ]
    errors += [
        abs(tile.row_bits[i] - reference_bits(scorer.model, [b, *x, e])) for i, x in enumerate(rows)
    ]
    errors += [
        abs(tile.col_bits[j] - reference_bits(scorer.model, [b, *y, e])) for j, y in enumerate(cols)
    ]
    return max(errors)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("prefix_cache", [True, False], ids=["prefix-cached", "naive"])
def test_family_matches_full_forward(
    models: Callable[[str], Path], arch: str, prefix_cache: bool
) -> None:
    # a small budget: several passes, rows and columns of different lengths in one pass
    scorer = LMScorer(str(models(arch)), device="cpu", token_budget=96, prefix_cache=prefix_cache)
    assert scorer.path == ("prefix-cached" if prefix_cache else "naive")
    assert largest_error(scorer) <= 1e-3


@pytest.mark.parametrize("arch", sorted(SLIDING))
def test_sliding_window_matters_here(models: Callable[[str], Path], arch: str) -> None:
    """The pairs are longer than the window, and the window changes their code lengths: the
    families test above would catch a scorer that ignored it."""
    scorer = LMScorer(str(models(arch)), device="cpu")
    b, e = scorer.loaded.bos_id, scorer.loaded.eos_id
    x, y = scorer.encode([ROWS[0], COLS[0]])
    pair = [b, *x, e, *y, e]
    assert len(pair) > 2 * WINDOW
    unwindowed = copy.deepcopy(scorer.model)
    unwindowed.config.sliding_window = 10 * len(pair)
    for layer in unwindowed.modules():
        if hasattr(layer, "sliding_window") and layer.sliding_window:
            layer.sliding_window = 10 * len(pair)
    difference = reference_bits(scorer.model, pair) - reference_bits(unwindowed, pair)
    assert abs(difference) > 0.01


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_plain_path_when_layout_unknown(
    models: Callable[[str], Path], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose attention the fast path cannot express is scored with its own masks."""
    monkeypatch.setattr("nncd_ray.scorers.lm.attention.attention_layout", lambda model: None)
    scorer = LMScorer(str(models(arch)), device="cpu", token_budget=96)
    assert scorer.path == "plain"
    assert largest_error(scorer) <= 1e-3


def test_fast_path_that_disagrees_falls_back(
    models: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The load-time check catches a fast path that is wrong for a model (here: masks that
    forget the sliding window, the old bug) and scores in full instead."""
    from nncd_ray.scorers.lm import attention

    real = attention.attention_masks

    def windowless(layout, *args, **kwargs):  # type: ignore[no-untyped-def]
        return real(
            attention.AttentionLayout(**{**layout.__dict__, "window": None}), *args, **kwargs
        )

    monkeypatch.setattr("nncd_ray.scorers.lm.passes.attention_masks", windowless)
    with caplog.at_level(logging.WARNING):
        scorer = LMScorer(str(models("mistral")), device="cpu", token_budget=96)
    assert scorer.path == "plain"
    assert "disagrees" in caplog.text
    assert largest_error(scorer) <= 1e-3


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_family_takes_the_fast_path(models: Callable[[str], Path], arch: str) -> None:
    """What the README's model-family table states: the prefix-cached path for each family."""
    scorer = LMScorer(str(models(arch)), device="cpu")
    assert scorer.path == "prefix-cached"
    assert scorer.layout is not None
    kinds = set(scorer.layout.layer_kinds)
    expected = {
        "gemma2": {"full_attention", "sliding_attention"},
        "gemma3": {"full_attention", "sliding_attention"},
    }
    assert kinds == expected.get(
        arch, {"sliding_attention"} if arch in SLIDING else {"full_attention"}
    )
    # Gemma 2 soft-caps its logits: the head leaves −ln p to after the model's own capping
    assert scorer.head is not None and scorer.head.fused == (arch != "gemma2")

"""Shared pytest fixtures. Additive: helpers append their own fixtures below."""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import GUTENBERG

from nncd_ray.testing.tiny_models import build_tiny_model, read_text_lines


def tokenizer_training_lines(max_lines: int = 400) -> list[str]:
    """A few hundred lines of Gutenberg text; the built-in fallback text when the data is absent."""
    books = sorted(GUTENBERG.glob("*.txt"))
    return read_text_lines(books, max_lines)  # empty -> build_tiny_model's built-in text


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved GPT-2-style model (2 layers, 64 wide, 256 positions, ~512-token BPE vocabulary)."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny_gpt2"),
        arch="gpt2",
        vocab_size=512,
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_positions=256,
        seed=0,
        tokenizer_texts=tokenizer_training_lines(),
    )


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved Llama-style model (RoPE, RMSNorm, grouped-query attention; 256 positions)."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny_llama"),
        arch="llama",
        vocab_size=512,
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_positions=256,
        seed=1,
        tokenizer_texts=tokenizer_training_lines(),
    )

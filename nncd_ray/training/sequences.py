"""Training sequences from the books: the token stream, and the endless, seeded order of the
windows a run trains on (``documents`` or ``stream`` layout)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nncd_ray.errors import ConfigError
from nncd_ray.training.books import BookSplit, load_books
from nncd_ray.training.documents import build_documents, document_sequences
from nncd_ray.training.tokenizer import encode_stream, train_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from nncd_ray.training.config import TrainConfig


def batch_order(n_tokens: int, context: int, seed: int) -> Iterator[np.ndarray]:
    """Start offsets of training windows, one epoch at a time: (n_windows,) int64 each.

    The stream is cut into non-overlapping windows of ``context`` target tokens; each epoch shifts
    the grid by a seeded offset and shuffles the windows with a seeded permutation.
    """
    rng = np.random.default_rng(seed)
    if n_tokens < context + 1:
        raise ConfigError(f"only {n_tokens} training tokens; need more than {context}")
    while True:
        shift = int(rng.integers(0, context))
        starts = np.arange(shift, n_tokens - context + 1, context, dtype=np.int64)
        yield starts[rng.permutation(len(starts))]


def prepare_data(config: TrainConfig) -> tuple[list[BookSplit], PreTrainedTokenizerFast, Any]:
    """Books, the tokenizer trained on their training parts, and the training token stream."""
    books = load_books(config.data_dir, config.holdout_fraction, config.max_books)
    texts = training_texts(books, config)
    tokenizer = train_tokenizer(texts, config.vocab_size)
    return books, tokenizer, encode_stream(tokenizer, texts)


def training_texts(books: Sequence[BookSplit], config: TrainConfig) -> list[str]:
    """The part of every book that is trained on (cut to ``max_train_bytes_per_book`` if set)."""
    limit = config.max_train_bytes_per_book
    return [b.train if limit is None else b.train[:limit] for b in books]


def training_windows(
    config: TrainConfig,
    tokenizer: PreTrainedTokenizerFast,
    books: Sequence[BookSplit],
    stream: np.ndarray,
) -> Iterator[np.ndarray]:
    """Endless ``(context,)`` int64 target windows in training order (each is fed after ``[b]``)."""
    context = config.shape.context_tokens
    if config.layout == "stream":
        return (
            stream[s : s + context]
            for epoch in batch_order(len(stream), context, config.seed)
            for s in epoch
        )
    if config.layout != "documents":
        raise ConfigError(f"unknown layout {config.layout!r}; choose documents or stream")
    docs = build_documents(tokenizer, training_texts(books, config), config.mix, config.seed)
    # noise spans draw from the learned symbols, never from the special tokens
    first_plain = 1 + max(int(i) for i in tokenizer.all_special_ids)
    return document_sequences(
        docs,
        context,
        int(tokenizer.eos_token_id),
        config.mix,
        config.seed,
        noise_tokens=(first_plain, len(tokenizer)),
    )

"""The embedded model's tokenizer: a byte-level BPE with BOS, EOS and PAD, trained on the books'
training parts paragraph by paragraph, on one thread; and how text becomes training tokens."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from nncd_ray.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def byte_level_bpe(lines: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with BOS, EOS and PAD special tokens on ``lines`` as given.

    Byte-level means every UTF-8 string is encodable (the 256 byte symbols are always in the
    vocabulary), so ``vocab_size`` must be at least 259. The tokenizer adds no special tokens on
    its own: the scorer places BOS/EOS explicitly (DESIGN.md §2). Used by the embedded model's
    training recipe (:func:`train_tokenizer`) and by the tiny test models.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise ConfigError(
            f"vocab_size {vocab_size} is too small for a byte-level BPE "
            f"(needs at least {len(alphabet) + len(specials)})"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1 << 30,
    )


def single_threaded_tokenizers() -> None:
    # the Rust side of `tokenizers` parallelises with rayon; one thread keeps data prep serial
    os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 pre-tokenisation) with BOS, EOS and PAD; adds no special tokens itself.

    Byte-level: the 256 byte symbols are always in the vocabulary, so every string is encodable.
    The texts are fed paragraph by paragraph in the order given.
    """
    single_threaded_tokenizers()

    def paragraphs() -> Iterator[str]:
        for text in texts:
            yield from (p for p in text.split("\n\n") if p)

    return byte_level_bpe(paragraphs(), vocab_size)


def encode_stream(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> np.ndarray:
    """``ids(t) + [eos]`` for every text, concatenated: (n_tokens,) int64."""
    eos = tokenizer.eos_token_id
    parts = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        parts.append(np.asarray([*ids, eos], dtype=np.int64))
    return np.concatenate(parts)


def token_byte_lengths(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """UTF-8 bytes each token id stands for, (vocab,) int64; special tokens count 0."""
    from tokenizers import pre_tokenizers

    # byte-level BPE spells each byte with one printable character; the alphabet has 256 of them
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    lengths = np.zeros(len(tokenizer), dtype=np.int64)
    specials = set(tokenizer.all_special_ids)
    for token, index in tokenizer.get_vocab().items():
        if index not in specials:
            lengths[index] = sum(1 for ch in token if ch in alphabet)
    return lengths

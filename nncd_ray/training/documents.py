"""Training sequences made of documents joined by ``[e]``: the way the scorer reads text.

The ``lm`` scorer codes a document as ``[b] x [e]`` and a pair as ``[b] x [e] y [e]`` (DESIGN.md
§2), so what a compressor for NCD must be good at is (1) starting cold after ``[b]`` or ``[e]`` and
(2) using whatever an earlier document says about the next one. A plain stream of books teaches
neither: it shows ``[e]`` once per book. This module cuts the books into documents (groups of whole
paragraphs, each ``min_tokens`` to ``max_tokens`` long) and builds every training sequence as ``[b]
d1 [e] d2 [e] d3 [e] …`` where each next document is

- with probability ``continue_prob`` the document that follows it in the same book (related text:
  the same people, places and words, so reading ``d1`` pays off in ``d2``),
- with probability ``repeat_prob`` an earlier document of the same sequence, verbatim (duplicates
  are common in real corpora; they teach the model to copy from its context, which is what makes
  C(y | x) depend on x),
- otherwise a document drawn uniformly from all books (unrelated text, where ``x`` must not be
  trusted).

With probability ``copy_task_prob`` a whole sequence is instead a copy drill: a document with its
tokens shuffled, twice, then another, twice, and so on; only copying from the context predicts the
second copy, which is the skill NCD rewards.

Gutenberg's files are hard-wrapped at about 70 columns; with probability ``unwrap_prob`` a
document's line breaks inside paragraphs are joined with spaces, so the model does not expect a
newline every 70 characters in text that has none.

With probability ``noise_prob`` a document is read with a span of 1 to ``noise_max_tokens`` random
tokens inserted at a random place (fresh noise each time the document is used). The model reads the
noise but is never asked to predict it (its targets are ignored in the loss); it is asked to predict
what follows. Real text is full of spans a model has no prior for (a Latin tag in a novel, an HTML
remnant in a news item); a model that never saw one loses its footing for the rest of the document,
so that *any* preceding document, by restoring it, makes such a document look near to everything.

Everything here is a pure function of its inputs and a ``numpy`` generator.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nncd_ray.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

_WRAP = re.compile(r"(?<!\n)\n(?!\n)")  # a single newline: a line wrap inside a paragraph


@dataclass(frozen=True, kw_only=True)
class DocumentMix:
    """How books become documents, and how documents follow one another in a sequence."""

    min_tokens: int = 24  # shortest document (paragraphs are grouped up to a drawn target)
    max_tokens: int = 254  # longest document: the scorer's default truncation for 512 tokens
    continue_prob: float = 0.4  # next document = the next one of the same book
    repeat_prob: float = 0.2  # next document = an earlier one of this sequence, verbatim
    unwrap_prob: float = 0.5  # join a document's hard line wraps with spaces
    copy_task_prob: float = 0.2  # a sequence is a copy drill: shuffled documents, each twice
    noise_prob: float = 0.0  # a document is read with a span of random tokens inserted
    noise_max_tokens: int = 6  # longest noise span

    def check(self) -> None:
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise ConfigError("document lengths need 1 <= min_tokens <= max_tokens")
        if self.noise_max_tokens < 1:
            raise ConfigError("noise_max_tokens must be at least 1")
        probs = (
            self.continue_prob,
            self.repeat_prob,
            self.unwrap_prob,
            self.copy_task_prob,
            self.noise_prob,
        )
        if any(not 0.0 <= p <= 1.0 for p in probs) or self.continue_prob + self.repeat_prob > 1:
            raise ConfigError(
                "document-mix probabilities must lie in [0, 1] (continue + repeat <= 1)"
            )


@dataclass(frozen=True, kw_only=True)
class Documents:
    """Token ids of every document, and which document follows each in its book (-1: none)."""

    ids: list[np.ndarray]  # (n_tokens,) int64 each, no special tokens
    next_in_book: np.ndarray  # (n_docs,) int64
    book: np.ndarray  # (n_docs,) int64 index of the book


def _paragraph_groups(
    paragraphs: Sequence[str],
    lengths: Sequence[int],
    separator: int,
    mix: DocumentMix,
    rng: np.random.Generator,
) -> list[str]:
    """Consecutive paragraphs joined (blank line between) up to a drawn target length in tokens;
    ``separator``: tokens the blank line between two paragraphs costs."""
    groups: list[str] = []
    current: list[str] = []
    size, target = 0, int(rng.integers(mix.min_tokens, mix.max_tokens + 1))

    def close_group() -> None:
        nonlocal current, size, target
        groups.append("\n\n".join(current))
        current, size = [], 0
        target = int(rng.integers(mix.min_tokens, mix.max_tokens + 1))

    for paragraph, length in zip(paragraphs, lengths, strict=True):
        if current:
            length += separator
        if current and size + length > target:
            close_group()
        current.append(paragraph)
        size += length
        if size >= target:
            close_group()
    if current:
        groups.append("\n\n".join(current))
    return groups


def build_documents(
    tokenizer: PreTrainedTokenizerFast, books: Sequence[str], mix: DocumentMix, seed: int
) -> Documents:
    """Cut every book into documents of whole paragraphs (a paragraph longer than ``max_tokens``
    is cut into pieces of ``max_tokens``), in book order; deterministic given ``seed``."""
    mix.check()
    rng = np.random.default_rng([seed, 1])
    ids: list[np.ndarray] = []
    next_in_book: list[int] = []
    book_of: list[int] = []
    encoded = tokenizer(["a", "a\n\na"], add_special_tokens=False)["input_ids"]
    separator = max(0, len(encoded[1]) - 2 * len(encoded[0]))
    for index, text in enumerate(books):
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        if not paragraphs:
            continue
        lengths = [len(x) for x in tokenizer(paragraphs, add_special_tokens=False)["input_ids"]]
        groups = _paragraph_groups(paragraphs, lengths, separator, mix, rng)
        unwrap = rng.random(len(groups)) < mix.unwrap_prob
        texts = [_WRAP.sub(" ", g) if u else g for g, u in zip(groups, unwrap, strict=True)]
        first = len(ids)
        for tokens in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            for start in range(0, len(tokens), mix.max_tokens):
                ids.append(np.asarray(tokens[start : start + mix.max_tokens], dtype=np.int64))
        count = len(ids) - first
        next_in_book.extend([*range(first + 1, first + count), -1])
        book_of.extend([index] * count)
    if not ids:
        raise ConfigError("the training books hold no text")
    return Documents(
        ids=ids,
        next_in_book=np.asarray(next_in_book, dtype=np.int64),
        book=np.asarray(book_of, dtype=np.int64),
    )


# the loss's ignore index (torch.nn.functional.cross_entropy's default)
IGNORE_INDEX = -100


def noise_token(token: np.ndarray) -> np.ndarray:
    """How a noise token is marked in a training window: ``-1 - token`` (read, never a target).
    The marking is its own inverse: ``noise_token(noise_token(t)) == t``."""
    return -1 - token


def split_window(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, targets)`` of a window: noise tokens unmarked in ``tokens`` and
    :data:`IGNORE_INDEX` in ``targets``."""
    noise = window < 0
    return np.where(noise, noise_token(window), window), np.where(noise, IGNORE_INDEX, window)


def _with_noise(
    doc: np.ndarray, mix: DocumentMix, noise_tokens: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    length = int(rng.integers(1, mix.noise_max_tokens + 1))
    where = int(rng.integers(0, len(doc) + 1))
    noise = noise_token(rng.integers(noise_tokens[0], noise_tokens[1], size=length))
    return np.concatenate([doc[:where], noise, doc[where:]])


def document_sequences(
    docs: Documents,
    context: int,
    eos: int,
    mix: DocumentMix,
    seed: int,
    noise_tokens: tuple[int, int] = (0, 0),
) -> Iterator[np.ndarray]:
    """Endless training sequences ``d1 [e] d2 [e] …`` of exactly ``context`` target tokens
    (fed after ``[b]``), each starting at the start of a document; deterministic given ``seed``.
    Noise spans (``mix.noise_prob``) are drawn from token ids ``noise_tokens[0] <= id <
    noise_tokens[1]`` and marked by :func:`noise_token`; :func:`split_window` unmarks them."""
    mix.check()
    if mix.noise_prob > 0 and not 0 <= noise_tokens[0] < noise_tokens[1]:
        raise ConfigError("noise spans need a non-empty range of token ids")
    rng = np.random.default_rng([seed, 2])
    n_docs = len(docs.ids)
    separator = np.asarray([eos], dtype=np.int64)
    while True:
        parts: list[np.ndarray] = []
        used: list[int] = []
        filled = 0
        if rng.random() < mix.copy_task_prob:
            while filled < context:
                shuffled = rng.permutation(docs.ids[int(rng.integers(n_docs))])
                parts += [shuffled, separator, shuffled, separator]
                filled += 2 * len(shuffled) + 2
            yield np.concatenate(parts)[:context]
            continue
        current = int(rng.integers(n_docs))
        while filled < context:
            doc = docs.ids[current]
            # the noise draw only when noise is on, so that recipes without it keep their sequences
            if mix.noise_prob > 0 and rng.random() < mix.noise_prob:
                doc = _with_noise(doc, mix, noise_tokens, rng)
            parts += [doc, separator]
            filled += len(doc) + 1
            used.append(current)
            draw = rng.random()
            follower = int(docs.next_in_book[current])
            if draw < mix.repeat_prob:
                current = used[int(rng.integers(len(used)))]
            elif draw < mix.repeat_prob + mix.continue_prob and follower >= 0:
                current = follower
            else:
                current = int(rng.integers(n_docs))
        yield np.concatenate(parts)[:context]

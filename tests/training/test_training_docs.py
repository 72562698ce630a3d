"""Training sequences of documents joined by [e] (nncd_ray.training.documents)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from nncd_ray.errors import ConfigError
from nncd_ray.training.config import TrainConfig
from nncd_ray.training.documents import (
    IGNORE_INDEX,
    DocumentMix,
    build_documents,
    document_sequences,
    split_window,
)
from nncd_ray.training.sequences import training_windows
from nncd_ray.training.tokenizer import byte_level_bpe

EOS = 1


def _book(name: str, paragraphs: int) -> str:
    return "\n\n".join(
        f"{name} paragraph {i} says\nthat the {name} story goes on, line {i}."
        for i in range(paragraphs)
    )


BOOKS = [_book("Alpha", 40), _book("Beta", 30)]


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return byte_level_bpe(BOOKS, 300)


def _documents_in(sequence: np.ndarray) -> list[np.ndarray]:
    """The complete documents of a training sequence, without their [e] (a cut tail is dropped)."""
    return [p[:-1] for p in np.split(sequence, np.flatnonzero(sequence == EOS) + 1)[:-1]]


def _decode(tokenizer, ids: np.ndarray) -> str:  # type: ignore[no-untyped-def]
    return str(tokenizer.decode(ids.tolist()))


def test_documents_are_whole_paragraphs_in_book_order(tokenizer) -> None:  # type: ignore[no-untyped-def]
    mix = DocumentMix(min_tokens=10, max_tokens=60, unwrap_prob=0.0)
    docs = build_documents(tokenizer, BOOKS, mix, seed=0)
    assert all(1 <= len(d) <= 60 for d in docs.ids)
    for index, text in enumerate(BOOKS):
        members = np.flatnonzero(docs.book == index)
        # each book's documents chain through next_in_book, and the last one has no follower
        assert list(docs.next_in_book[members[:-1]]) == list(members[1:])
        assert docs.next_in_book[members[-1]] == -1
        joined = "\n\n".join(_decode(tokenizer, docs.ids[i]) for i in members)
        assert joined == text  # nothing lost, nothing reordered, cuts only between paragraphs
    assert len({len(d) for d in docs.ids}) > 1  # lengths are drawn, not fixed


def test_unwrap_joins_line_wraps_but_keeps_paragraphs(tokenizer) -> None:  # type: ignore[no-untyped-def]
    docs = build_documents(tokenizer, BOOKS, DocumentMix(unwrap_prob=1.0, max_tokens=254), seed=0)
    text = _decode(tokenizer, docs.ids[0])
    assert "says that" in text and "says\nthat" not in text and "\n\n" in text


def test_long_paragraphs_are_cut_to_max_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    long = " ".join(["word"] * 500)
    docs = build_documents(tokenizer, [long], DocumentMix(max_tokens=64), seed=0)
    assert max(len(d) for d in docs.ids) == 64 and len(docs.ids) > 5


def test_sequences_join_documents_with_eos_deterministically(tokenizer) -> None:  # type: ignore[no-untyped-def]
    docs = build_documents(tokenizer, BOOKS, DocumentMix(max_tokens=60), seed=0)
    mix = DocumentMix(continue_prob=0.5, repeat_prob=0.1, copy_task_prob=0.0)
    first = list(itertools.islice(document_sequences(docs, 128, EOS, mix, seed=3), 20))
    again = list(itertools.islice(document_sequences(docs, 128, EOS, mix, seed=3), 20))
    other = list(itertools.islice(document_sequences(docs, 128, EOS, mix, seed=4), 20))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    starts = {tuple(d[:8]) for d in docs.ids}
    for sequence in first:
        assert sequence.shape == (128,) and sequence.dtype == np.int64
        assert tuple(sequence[:8]) in starts  # every sequence starts at a document's start
        assert (sequence == EOS).any()


def test_repeat_and_continue_choose_the_next_document(tokenizer) -> None:  # type: ignore[no-untyped-def]
    docs = build_documents(tokenizer, BOOKS, DocumentMix(min_tokens=5, max_tokens=20), seed=0)
    repeat = next(
        document_sequences(docs, 200, EOS, DocumentMix(repeat_prob=1.0, continue_prob=0.0), 0)
    )
    pieces = _documents_in(repeat)
    assert np.array_equal(pieces[0], pieces[1])  # only one earlier document: it comes again
    follow = next(
        document_sequences(
            docs, 200, EOS, DocumentMix(repeat_prob=0.0, continue_prob=1.0, copy_task_prob=0.0), 1
        )
    )
    pieces = _documents_in(follow)
    index = [next(i for i, d in enumerate(docs.ids) if np.array_equal(d, p)) for p in pieces[:3]]
    assert index[1] == docs.next_in_book[index[0]] or docs.next_in_book[index[0]] == -1


@pytest.mark.parametrize(
    "mix",
    [
        DocumentMix(min_tokens=0),
        DocumentMix(min_tokens=50, max_tokens=10),
        DocumentMix(continue_prob=0.8, repeat_prob=0.3),
        DocumentMix(unwrap_prob=1.5),
        DocumentMix(noise_prob=-0.1),
        DocumentMix(noise_max_tokens=0),
    ],
)
def test_bad_mix_is_refused(tokenizer, mix: DocumentMix) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        build_documents(tokenizer, BOOKS, mix, seed=0)


def test_stream_layout_is_windows_of_the_stream(tokenizer) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig(data_dir=Path("."), out_dir=Path("."), layout="stream")
    stream = np.arange(5000, dtype=np.int64)
    windows = list(itertools.islice(training_windows(config, tokenizer, [], stream), 5))
    context = config.shape.context_tokens
    assert all(
        len(w) == context and np.array_equal(w, np.arange(w[0], w[0] + context)) for w in windows
    )
    with pytest.raises(ConfigError, match="layout"):
        training_windows(
            TrainConfig(data_dir=Path("."), out_dir=Path("."), layout="x"), tokenizer, [], stream
        )  # type: ignore[arg-type]


def test_copy_drill_repeats_a_shuffled_document(tokenizer) -> None:  # type: ignore[no-untyped-def]
    docs = build_documents(tokenizer, BOOKS, DocumentMix(min_tokens=5, max_tokens=20), seed=0)
    drill = next(document_sequences(docs, 120, EOS, DocumentMix(copy_task_prob=1.0), 0))
    pieces = _documents_in(drill)
    assert len(pieces) >= 4
    assert np.array_equal(pieces[0], pieces[1]) and np.array_equal(pieces[2], pieces[3])
    sorted_docs = {tuple(sorted(d.tolist())) for d in docs.ids}
    assert tuple(sorted(pieces[0].tolist())) in sorted_docs  # a permutation of one document


def test_noise_spans_are_read_but_never_targets(tokenizer) -> None:  # type: ignore[no-untyped-def]
    docs = build_documents(tokenizer, BOOKS, DocumentMix(min_tokens=5, max_tokens=20), seed=0)
    mix = DocumentMix(noise_prob=1.0, noise_max_tokens=4, copy_task_prob=0.0, repeat_prob=0.0)
    window = next(document_sequences(docs, 200, EOS, mix, 0, noise_tokens=(3, 300)))
    tokens, targets = split_window(window)
    noise = targets == IGNORE_INDEX
    assert noise.any() and (tokens >= 0).all()
    assert ((tokens[noise] >= 3) & (tokens[noise] < 300)).all()
    assert np.array_equal(tokens[~noise], targets[~noise])
    # taking the noise out leaves whole documents of the books, each with one span of 1 to 4
    clean = tokens[~noise]
    pieces = _documents_in(clean)
    known = {tuple(d.tolist()) for d in docs.ids}
    assert all(tuple(p.tolist()) in known for p in pieces)
    spans = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], noise, [0]]))))[::2]
    assert spans.min() >= 1 and spans.max() <= 4
    again = next(document_sequences(docs, 200, EOS, mix, 0, noise_tokens=(3, 300)))
    assert np.array_equal(window, again)  # deterministic given the seed


def test_no_noise_leaves_sequences_as_they_were(tokenizer) -> None:  # type: ignore[no-untyped-def]
    docs = build_documents(tokenizer, BOOKS, DocumentMix(max_tokens=60), seed=0)
    plain = DocumentMix()
    first = list(itertools.islice(document_sequences(docs, 128, EOS, plain, seed=3), 10))
    ranged = document_sequences(docs, 128, EOS, plain, seed=3, noise_tokens=(3, 300))
    assert all(np.array_equal(a, b) for a, b in zip(first, ranged, strict=False))
    assert all((w >= 0).all() for w in first)
    tokens, targets = split_window(first[0])
    assert np.array_equal(tokens, first[0]) and np.array_equal(targets, first[0])
    with pytest.raises(ConfigError, match="range of token ids"):
        next(document_sequences(docs, 128, EOS, DocumentMix(noise_prob=0.5), seed=3))

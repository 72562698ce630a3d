"""Bits per byte of a causal language model, and of the classical compressors on the same text.

Two measurements, both in bits per UTF-8 byte (total bits / total bytes):

- held-out Gutenberg (:func:`heldout_bits`): each held-out slice is one token sequence
  ``ids(slice) + [e]``, scored in windows of the model's context: every window starts with ``[b]``
  and scores ``stride`` new tokens after up to ``context - 1 - stride`` tokens of already-scored
  context (``stride = context - 1`` gives non-overlapping windows).
- documents (:func:`document_bits`): the code length of DESIGN.md §2, C(x) = Σ −log2 p over
  ``ids(x) + [e]`` given ``[b]``, each document on its own, in float32 log-softmax.
"""

from __future__ import annotations

import bz2
import csv
import lzma
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nncd_ray.errors import DatasetNotFound, DocumentTooLong, UnknownCompressor

if TYPE_CHECKING:
    import torch

    from nncd_ray.scorers.lm.loading import LoadedModel

CLASSICAL = ("gzip", "bz2", "lzma", "zstd")


@dataclass(frozen=True, kw_only=True)
class BitsPerByte:
    bits: float  # total code length, bits
    bytes: int  # total UTF-8 bytes
    items: int  # slices or documents

    @property
    def bpb(self) -> float:
        return self.bits / self.bytes if self.bytes else math.nan


def _token_bits(model: torch.nn.Module, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−log2 p of ``inputs[:, 1:]`` given the prefix: (B, L-1) float32 bits (0 where masked)."""
    import torch

    logits = model(input_ids=inputs, attention_mask=mask).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, inputs[:, 1:, None]).squeeze(-1)
    return -picked / math.log(2) * mask[:, 1:]


def document_bits(
    loaded: LoadedModel, texts: Sequence[str], *, token_budget: int = 8192
) -> np.ndarray:
    """C(x) of every text, (n,) float64 bits; raises DocumentTooLong past the context."""
    import torch

    tokenizer = loaded.tokenizer
    sequences = []
    for index, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        seq = [loaded.bos_id, *ids, loaded.eos_id]
        if len(seq) > loaded.context_tokens:
            raise DocumentTooLong(
                f"document {index} has {len(ids)} tokens; the context holds "
                f"{loaded.context_tokens - 2}"
            )
        sequences.append(seq)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    bits = np.zeros(len(sequences), dtype=np.float64)
    pad = loaded.eos_id
    with torch.inference_mode():
        start = 0
        while start < len(order):
            longest = len(sequences[order[start]])
            stop = start
            while stop < len(order):
                longest = max(longest, len(sequences[order[stop]]))
                if (stop - start + 1) * longest > token_budget and stop > start:
                    break
                stop += 1
            batch = [sequences[i] for i in order[start:stop]]
            width = max(len(s) for s in batch)
            inputs = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, seq in enumerate(batch):
                inputs[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            per_doc = _token_bits(loaded.model, inputs, mask).sum(dim=1, dtype=torch.float64)
            bits[order[start:stop]] = per_doc.numpy()
            start = stop
    return bits


def heldout_bits(
    loaded: LoadedModel, text: str, *, stride: int | None = None, batch_size: int = 8
) -> float:
    """Bits of ``ids(text) + [e]`` scored in windows of the context (see module docstring).

    ``stride`` new tokens per window (default half the context); every scored token sees
    ``[b]`` plus at least ``context - 1 - stride`` tokens before it, except at the start.
    """
    import torch

    context = loaded.context_tokens
    step = stride if stride is not None else context // 2
    if not 0 < step <= context - 1:
        raise ValueError(f"stride must be in [1, {context - 1}], got {step}")
    ids = [*loaded.tokenizer(text, add_special_tokens=False)["input_ids"], loaded.eos_id]
    windows = []  # (first context token, first scored token, end)
    for first_scored in range(0, len(ids), step):
        end = min(first_scored + step, len(ids))
        windows.append((max(0, end - (context - 1)), first_scored, end))
    total = 0.0
    with torch.inference_mode():
        for b in range(0, len(windows), batch_size):
            chunk = windows[b : b + batch_size]
            width = 1 + max(end - begin for begin, _, end in chunk)
            inputs = torch.full((len(chunk), width), loaded.eos_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (begin, _, end) in enumerate(chunk):
                inputs[row, 0] = loaded.bos_id
                inputs[row, 1 : 1 + end - begin] = torch.tensor(ids[begin:end])
                mask[row, : 1 + end - begin] = 1
            bits = _token_bits(loaded.model, inputs, mask)
            for row, (begin, first_scored, end) in enumerate(chunk):
                # bits[:, j] is the cost of inputs[:, j + 1] = ids[begin + j]
                total += float(
                    bits[row, first_scored - begin : end - begin].sum(dtype=torch.float64)
                )
    return total


def heldout_gutenberg(
    loaded: LoadedModel,
    data_dir: Path,
    *,
    holdout_fraction: float = 0.05,
    stride: int | None = None,
) -> dict[str, BitsPerByte]:
    """Per-book held-out bits (the last ``holdout_fraction`` of each book's bytes)."""
    from nncd_ray.training.books import load_books

    return {
        book.name: BitsPerByte(
            bits=heldout_bits(loaded, book.heldout, stride=stride),
            bytes=len(book.heldout.encode("utf-8")),
            items=1,
        )
        for book in load_books(data_dir, holdout_fraction)
    }


def total(parts: Sequence[BitsPerByte]) -> BitsPerByte:
    return BitsPerByte(
        bits=sum(p.bits for p in parts),
        bytes=sum(p.bytes for p in parts),
        items=sum(p.items for p in parts),
    )


def classical_bits(name: str, data: bytes) -> int:
    """Bits of ``data`` alone: gzip -9 (gzip container), bz2 -9, xz default preset, zstd -19."""
    if name == "gzip":
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        return 8 * len(compressor.compress(data) + compressor.flush())
    if name == "bz2":
        return 8 * len(bz2.compress(data, 9))
    if name == "lzma":
        return 8 * len(lzma.compress(data))
    if name == "zstd":
        import zstandard

        return 8 * len(zstandard.ZstdCompressor(level=19).compress(data))
    raise UnknownCompressor(f"unknown compressor {name!r}; choose from {', '.join(CLASSICAL)}")


def classical_bpb(name: str, texts: Sequence[str]) -> BitsPerByte:
    """Each text compressed on its own; totals over all of them."""
    encoded = [t.encode("utf-8") for t in texts]
    return BitsPerByte(
        bits=float(sum(classical_bits(name, data) for data in encoded)),
        bytes=sum(len(d) for d in encoded),
        items=len(encoded),
    )


def load_agnews_texts(path: Path) -> list[str]:
    """AG News CSV (label, title, description; no header) -> texts ``title + " " + description``."""
    if not Path(path).is_file():
        raise DatasetNotFound(f"AG News file {path} does not exist")
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return [row[1] + " " + row[2] for row in csv.reader(handle)]


def evaluate_model(
    model: str | None,
    *,
    gutenberg_dir: Path,
    agnews_csv: Path | None = None,
    stride: int | None = None,
    holdout_fraction: float = 0.05,
) -> dict[str, Any]:
    """The model card's table: LM and classical bits per byte on held-out Gutenberg and AG News.

    ``model`` is a saved model directory (None: the embedded one), loaded in float32 on the CPU.
    AG News is only ever scored here, never trained or tuned on.
    """
    import torch

    from nncd_ray.scorers.lm.loading import load_causal_lm
    from nncd_ray.training.books import load_books

    loaded = load_causal_lm(model, device=torch.device("cpu"), dtype=torch.float32)
    heldout = [b.heldout for b in load_books(gutenberg_dir, holdout_fraction)]
    books = heldout_gutenberg(
        loaded, gutenberg_dir, holdout_fraction=holdout_fraction, stride=stride
    )
    window = stride if stride is not None else loaded.context_tokens // 2
    report: dict[str, Any] = {
        "model": loaded.fingerprint,
        "parameters": loaded.parameters,
        "context_tokens": loaded.context_tokens,
        "gutenberg_heldout": {
            "slices": len(books),
            "bytes": total(list(books.values())).bytes,
            "stride_tokens": window,
            "lm": round(total(list(books.values())).bpb, 4),
            "per_book_lm": {name: round(part.bpb, 4) for name, part in books.items()},
            **{name: round(classical_bpb(name, heldout).bpb, 4) for name in CLASSICAL},
        },
    }
    if agnews_csv is not None:
        texts = load_agnews_texts(agnews_csv)
        bits = document_bits(loaded, texts)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        report["agnews"] = {
            "documents": len(texts),
            "bytes": n_bytes,
            "lm": round(float(bits.sum()) / n_bytes, 4),
            "lm_mean_over_docs": round(
                float(np.mean(bits / [len(t.encode("utf-8")) for t in texts])), 4
            ),
            **{name: round(classical_bpb(name, texts).bpb, 4) for name in CLASSICAL},
        }
    return report

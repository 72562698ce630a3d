"""Bits per byte of a causal language model, and of the classical compressors on the same text:
the figures of the embedded model's card (``nncd train --evaluate-only``).

Every code length comes from the project's scorers, so the card measures the compressor that the
matrix uses (one C(x) in the package). Two measurements, both in bits per UTF-8 byte (total bits /
total bytes):

- documents (AG News, :func:`documents_bits_per_byte`): C(x) of each document on its own, from
  :meth:`~nncd_ray.scorers.lm.LMScorer.document_bits` (DESIGN.md §2: Σ −log2 p over
  ``ids(x) + [e]`` given ``[b]``, float32 log-softmax), over the bytes each code length covers
  (:meth:`~nncd_ray.scorers.lm.LMScorer.scored_bytes`: a document longer than the scorer's
  ``max_doc_tokens`` is truncated to it, and counted); classical compressors through
  :func:`~nncd_ray.scorers.make_scorer` at their default levels (gzip -9, bz2 -9, xz preset 6,
  zstd -19).
- held-out Gutenberg (:func:`heldout_bits`): each book's held-out slice is far longer than a
  document, so it is one token sequence ``ids(slice) + [e]`` scored in windows of the model's
  context through the scorer's model: every window starts with ``[b]`` and scores ``stride`` new
  tokens after up to ``context - 1 - stride`` tokens of already-scored context (``stride =
  context - 1`` gives non-overlapping windows; a slice that fits one window costs exactly its
  C(x)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nncd_ray.data.agnews import load_agnews
from nncd_ray.scorers import CLASSICAL, make_scorer
from nncd_ray.scorers.base import Scorer
from nncd_ray.training.books import load_books

if TYPE_CHECKING:
    import torch

    from nncd_ray.scorers.lm import LMScorer


@dataclass(frozen=True, kw_only=True)
class BitsPerByte:
    """A total code length over a total of bytes."""

    bits: float  # total code length, bits
    bytes: int  # total UTF-8 bytes the code length covers
    items: int  # slices or documents
    truncated: int = 0  # documents the compressor truncated (their scored bytes are fewer)
    # unweighted mean of per-document bits per byte (NaN where not measured per document)
    mean_rate: float = math.nan

    @property
    def bpb(self) -> float:
        return self.bits / self.bytes if self.bytes else math.nan


def total(parts: Sequence[BitsPerByte]) -> BitsPerByte:
    """The sum of several measurements (bits over bytes, not a mean of rates)."""
    return BitsPerByte(
        bits=sum(p.bits for p in parts),
        bytes=sum(p.bytes for p in parts),
        items=sum(p.items for p in parts),
        truncated=sum(p.truncated for p in parts),
    )


def documents_bits_per_byte(scorer: Scorer, texts: Sequence[str]) -> BitsPerByte:
    """Each text compressed on its own by ``scorer``: total C(x) over the total bytes scored,
    and the unweighted mean of the per-document rates."""
    bits = np.asarray(scorer.document_bits(texts), dtype=np.float64)
    scored = np.asarray(scorer.scored_bytes(texts), dtype=np.int64)
    full = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.int64)
    return BitsPerByte(
        bits=float(bits.sum()),
        bytes=int(scored.sum()),
        items=len(texts),
        truncated=int((scored < full).sum()),
        mean_rate=float(np.mean(bits / scored)),
    )


def _token_bits(model: Any, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−log2 p of ``inputs[:, 1:]`` given what precedes it: ``(B, L-1)`` float32 bits on the
    model's device (0 where masked)."""
    import torch

    logits = model(input_ids=inputs, attention_mask=mask).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, inputs[:, 1:, None]).squeeze(-1)
    return -picked / math.log(2) * mask[:, 1:]


def heldout_bits(
    scorer: LMScorer, text: str, *, stride: int | None = None, batch_size: int = 8
) -> float:
    """Bits of ``ids(text) + [e]`` scored in windows of the context (see the module docstring).

    ``stride`` new tokens per window (default half the context); every scored token sees ``[b]``
    plus at least ``context - 1 - stride`` tokens before it, except at the start. Runs on the
    scorer's device; windows of ``batch_size`` at a time.
    """
    import torch

    from nncd_ray.errors import ConfigError

    loaded = scorer.loaded
    context = loaded.context_tokens
    step = stride if stride is not None else context // 2
    if not 0 < step <= context - 1:
        raise ConfigError(f"stride must be in [1, {context - 1}], not {step}")
    ids = [*loaded.tokenizer(text, add_special_tokens=False)["input_ids"], loaded.eos_id]
    windows = []  # (first context token, first scored token, end)
    for first_scored in range(0, len(ids), step):
        end = min(first_scored + step, len(ids))
        windows.append((max(0, end - (context - 1)), first_scored, end))
    total_bits = 0.0
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
            bits = _token_bits(loaded.model, inputs.to(scorer.device), mask.to(scorer.device))
            sums = torch.stack(
                [
                    # bits[:, j] is the cost of inputs[:, j + 1] = ids[begin + j]
                    bits[row, first_scored - begin : end - begin].sum(dtype=torch.float64)
                    for row, (begin, first_scored, end) in enumerate(chunk)
                ]
            )
            total_bits += float(sums.sum().cpu())  # one read back per batch of windows
    return total_bits


def heldout_gutenberg(
    scorer: LMScorer,
    data_dir: Path,
    *,
    holdout_fraction: float = 0.05,
    stride: int | None = None,
) -> dict[str, BitsPerByte]:
    """Per-book held-out bits of the model (the last ``holdout_fraction`` of each book's bytes)."""
    return {
        book.name: BitsPerByte(
            bits=heldout_bits(scorer, book.heldout, stride=stride),
            bytes=len(book.heldout.encode("utf-8")),
            items=1,
        )
        for book in load_books(data_dir, holdout_fraction)
    }


def evaluate_model(
    model: str | None,
    *,
    gutenberg_dir: Path,
    agnews_csv: Path | None = None,
    stride: int | None = None,
    holdout_fraction: float = 0.05,
    device: str = "cpu",
) -> dict[str, Any]:
    """The model card's table: LM and classical bits per byte on held-out Gutenberg and AG News.

    ``model`` is a saved model directory (None: the embedded one), scored by the ``lm`` scorer in
    float32 on ``device``. AG News is only ever scored here, never trained or tuned on.
    """
    from nncd_ray.scorers.lm import LMScorer

    scorer = LMScorer(model, device=device, dtype="fp32")
    loaded = scorer.loaded
    classical = {name: make_scorer(name) for name in CLASSICAL}
    heldout = [b.heldout for b in load_books(gutenberg_dir, holdout_fraction)]
    books = heldout_gutenberg(
        scorer, gutenberg_dir, holdout_fraction=holdout_fraction, stride=stride
    )
    together = total(list(books.values()))
    report: dict[str, Any] = {
        "model": loaded.fingerprint,
        "parameters": loaded.parameters,
        "context_tokens": loaded.context_tokens,
        "gutenberg_heldout": {
            "slices": len(books),
            "bytes": together.bytes,
            "stride_tokens": stride if stride is not None else loaded.context_tokens // 2,
            "lm": round(together.bpb, 4),
            "per_book_lm": {name: round(part.bpb, 4) for name, part in books.items()},
            **{
                name: round(documents_bits_per_byte(c, heldout).bpb, 4)
                for name, c in classical.items()
            },
        },
    }
    if agnews_csv is not None:
        texts = list(load_agnews(agnews_csv).texts)
        lm = documents_bits_per_byte(scorer, texts)
        report["agnews"] = {
            "documents": len(texts),
            "bytes": sum(len(t.encode("utf-8")) for t in texts),
            "bytes_scored_lm": lm.bytes,
            "max_doc_tokens": scorer.max_doc_tokens,
            "documents_truncated_lm": lm.truncated,
            "lm": round(lm.bpb, 4),
            "lm_mean_over_docs": round(lm.mean_rate, 4),
            **{
                name: round(documents_bits_per_byte(c, texts).bpb, 4)
                for name, c in classical.items()
            },
        }
    return report


__all__ = [
    "BitsPerByte",
    "documents_bits_per_byte",
    "evaluate_model",
    "heldout_bits",
    "heldout_gutenberg",
    "total",
]

"""A causal language model as a compressor: code lengths in bits from a Hugging Face causal LM.

Contract (``shared/DESIGN.md`` §2, exact), with b = BOS (EOS where the model has none), e = EOS and
``ids(s) = tokenizer(s, add_special_tokens=False).input_ids`` (truncated, see below):

- ``C(x)  = Σ −log2 p`` over ``ids(x) + [e]`` given ``[b]``;
- ``C(xy) = Σ −log2 p`` over ``ids(x) + [e] + ids(y) + [e]`` given ``[b]`` = ``C(x) + C(y | x)``.

Log-probabilities always come from a float32 log-softmax, whatever the weights' dtype.

Fast path (``prefix_cache=True``): for each row x the prefix ``[b] + ids(x) + [e]`` runs once; that
pass gives C(x), the distribution of the first token after the prefix, and the prefix's KV cache.
Each column y then costs only its own ``|ids(y)|`` tokens: columns run in length-sorted batches
against the cache expanded (not copied) over the batch. ``prefix_cache=False`` is the naive scorer,
running ``[b] x [e] y`` for every pair with the same batching (for benchmarks and cross-checks).

Truncation (never silent): every document is cut to ``max_doc_tokens`` tokens, by default
``(context - 3) // 2`` so that ``[b] x [e] y [e]`` fits the context; the policy and the limit are
in the fingerprint, and ``counters.documents_truncated`` counts the cuts. ``truncation="error"``
refuses long documents with :class:`~nncd_ray.errors.DocumentTooLong` instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import ConfigError, DocumentTooLong, InputError
from nncd_ray.models import cache_argument, output_cache
from nncd_ray.scorers.base import BaseScorer, TileScores
from nncd_ray.scorers.lm_batches import pad_batch, token_batches
from nncd_ray.scorers.lm_cache import (
    PrefixLayers,
    expanded_cache,
    plain_dynamic_cache,
    prefix_layers,
)

if TYPE_CHECKING:
    import torch

    from nncd_ray.models import LoadedModel

TRUNCATION_POLICIES = ("truncate", "error")
_LN2 = math.log(2.0)
# float32 logits processed per cross-entropy chunk (elements), to bound the log-softmax's memory
_LOGIT_CHUNK_ELEMENTS = 1 << 25


@dataclass(kw_only=True)
class LMCounters:
    """Running totals since the scorer was built (per instance; for speed and FLOP reports)."""

    # documents cut to max_doc_tokens (each time one is encoded, so a column cut once per tile)
    documents_truncated: int = 0
    # non-padding tokens run through the model: FLOPs ≈ 2 × parameters × model_tokens
    model_tokens: int = 0
    # tokens including right padding (batch × longest row, summed over forward passes)
    padded_tokens: int = 0
    forward_passes: int = 0


@dataclass(frozen=True, kw_only=True)
class _Pass:
    """One forward pass: ``bits`` (batch,) float64 code length of each row's scored tokens;
    ``next_logprobs`` (batch, vocab) float32 log-distribution after each row (prefix passes only);
    ``cache`` the pass's KV cache (prefix passes only)."""

    bits: NDArray[np.float64]
    next_logprobs: torch.Tensor | None
    cache: Any


class LMScorer(BaseScorer):
    """Code lengths of documents and pairs under a causal LM (see the module docstring)."""

    name = "lm"

    def __init__(
        self,
        model: str | None = None,
        *,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_doc_tokens: int | None = None,
        truncation: str = "truncate",
        token_budget: int = 8192,
        trust_remote_code: bool = False,
        prefix_cache: bool = True,
    ) -> None:
        import torch

        from nncd_ray.devices import resolve_device, resolve_dtype
        from nncd_ray.models import load_causal_lm

        if truncation not in TRUNCATION_POLICIES:
            raise ConfigError(
                f"unknown truncation policy {truncation!r}; choose one of: "
                f"{', '.join(TRUNCATION_POLICIES)}"
            )
        if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1:
            raise ConfigError(f"token_budget must be a positive integer, not {token_budget!r}")
        torch_device = resolve_device(device)
        self.loaded: LoadedModel = load_causal_lm(
            model,
            device=torch_device,
            dtype=resolve_dtype(dtype, torch_device),
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
        longest = (self.loaded.context_tokens - 3) // 2
        if longest < 1:
            raise ConfigError(f"context of {self.loaded.context_tokens} tokens is too short")
        if max_doc_tokens is None:
            max_doc_tokens = longest
        elif (
            isinstance(max_doc_tokens, bool)
            or not isinstance(max_doc_tokens, int)
            or not 1 <= max_doc_tokens <= longest
        ):
            raise ConfigError(
                f"max_doc_tokens must be an integer from 1 to {longest} (so that [b] x [e] y [e] "
                f"fits the {self.loaded.context_tokens}-token context), not {max_doc_tokens!r}"
            )
        self.max_doc_tokens: int = max_doc_tokens
        self.truncation = truncation
        self.token_budget = token_budget
        self.prefix_cache = bool(prefix_cache)
        self.device = torch_device
        self.model = self.loaded.model
        self.tokenizer = self.loaded.tokenizer
        self.parameters: int = self.loaded.parameters
        self.counters = LMCounters()
        self._bos, self._eos = self.loaded.bos_id, self.loaded.eos_id
        # padding is never attended to by a real token; EOS is always inside the embedding table
        self._pad = self._eos
        self._plain_cache = plain_dynamic_cache(self.model.config)
        self._cache_argument = cache_argument(self.model)
        with torch.inference_mode():
            self._mask_logits = self._supports_logit_mask()

    # ---------------------------------------------------------------- public API

    def fingerprint(self) -> dict[str, Any]:
        """What changes the numbers: weights, tokenizer, dtype, special tokens, truncation.
        Device, token budget and prefix caching change them only by float rounding."""
        return {
            "compressor": self.name,
            **self.loaded.fingerprint,
            "bos_id": self._bos,
            "eos_id": self._eos,
            "max_doc_tokens": self.max_doc_tokens,
            "truncation": self.truncation,
            "code": "C(x)=[b]x[e]; C(xy)=[b]x[e]y[e]; float32 log-softmax; bits",
        }

    def document_bits(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """C(x) of each text: ``(len(texts),) float64`` bits."""
        import torch

        docs = self.encode(texts)
        with torch.inference_mode():
            return self._document_bits(docs)

    def pair_bits(self, rows: Sequence[str], cols: Sequence[str]) -> NDArray[np.float64]:
        """C(x y), x = row, y = column: ``(len(rows), len(cols)) float64`` bits."""
        return self._tile(rows, cols, want_cols=False).pair_bits

    def score_tile(self, rows: Sequence[str], cols: Sequence[str]) -> TileScores:
        """Row and column C(·) and every pair's C(xy); ``work_units`` = model tokens used."""
        return self._tile(rows, cols, want_cols=True)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """``ids(s)`` of each text after the truncation policy (token ids, no special tokens)."""
        if isinstance(texts, str):
            raise InputError("expected a sequence of documents, got a single string")
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"document number {position} is {type(text).__name__}, not text")
            if not text:
                raise InputError(f"document number {position} is empty; remove it or give it text")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InputError(
                    f"document number {position} cannot be encoded as UTF-8 ({exc.reason} at "
                    f"character {exc.start})"
                ) from exc
        if not texts:
            return []
        # verbose=False: no warning about model_max_length, the policy below handles length
        encoded = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        docs: list[list[int]] = []
        for position, ids in enumerate(encoded):
            if len(ids) > self.max_doc_tokens:
                if self.truncation == "error":
                    preview = texts[position][:40].replace("\n", " ")
                    raise DocumentTooLong(
                        f"document number {position} ({preview!r}...) has {len(ids)} tokens, more "
                        f"than max_doc_tokens={self.max_doc_tokens}; shorten it, raise "
                        f"max_doc_tokens, or use truncation='truncate'"
                    )
                ids = ids[: self.max_doc_tokens]
                self.counters.documents_truncated += 1
            docs.append([int(t) for t in ids])
        return docs

    def stats(self) -> dict[str, int]:
        """Counters plus the parameter count, JSON-able."""
        return {**asdict(self.counters), "parameters": self.parameters}

    # ---------------------------------------------------------------- tiles

    def _tile(self, rows: Sequence[str], cols: Sequence[str], *, want_cols: bool) -> TileScores:
        import torch

        row_docs, col_docs = self.encode(rows), self.encode(cols)
        start = self.counters.model_tokens
        with torch.inference_mode():
            if self.prefix_cache:
                row_bits, pair = self._cached_pairs(row_docs, col_docs)
            else:
                row_bits = self._document_bits(row_docs) if want_cols else np.zeros(len(row_docs))
                pair = self._naive_pairs(row_docs, col_docs)
            col_bits = self._document_bits(col_docs) if want_cols else np.zeros(len(col_docs))
        return TileScores(
            row_bits=row_bits,
            col_bits=col_bits,
            pair_bits=pair,
            work_units=self.counters.model_tokens - start,
        )

    def _document_bits(self, docs: list[list[int]]) -> NDArray[np.float64]:
        """C(x): input ``[b] + ids(x)``, the last position predicting e."""
        out = np.zeros(len(docs), dtype=np.float64)
        inputs = [[self._bos, *doc] for doc in docs]
        for batch in token_batches([len(s) for s in inputs], self.token_budget):
            result = self._forward([inputs[i] for i in batch], final=[self._eos] * len(batch))
            out[batch] = result.bits
        return out

    def _naive_pairs(
        self, row_docs: list[list[int]], col_docs: list[list[int]]
    ) -> NDArray[np.float64]:
        """C(xy) with the whole ``[b] x [e] y`` through the model for every pair."""
        pair = np.zeros((len(row_docs), len(col_docs)), dtype=np.float64)
        if not row_docs or not col_docs:
            return pair
        n_cols = len(col_docs)
        lengths = [len(x) + len(y) + 2 for x in row_docs for y in col_docs]
        for batch in token_batches(lengths, self.token_budget):
            inputs = [
                [self._bos, *row_docs[k // n_cols], self._eos, *col_docs[k % n_cols]] for k in batch
            ]
            result = self._forward(inputs, final=[self._eos] * len(batch))
            pair.flat[batch] = result.bits
        return pair

    def _cached_pairs(
        self, row_docs: list[list[int]], col_docs: list[list[int]]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(C(x) of the rows, C(xy)) with one prefix pass per row and cached column passes."""
        import torch

        row_bits = np.zeros(len(row_docs), dtype=np.float64)
        pair = np.zeros((len(row_docs), len(col_docs)), dtype=np.float64)
        prefixes = [[self._bos, *x, self._eos] for x in row_docs]
        # y's first token (e when ids(y) is empty) is scored from the prefix pass's last position
        first = torch.tensor(
            [y[0] if y else self._eos for y in col_docs], dtype=torch.long, device=self.device
        )
        # columns with tokens run as ids(y), each position predicting the next and the last one e
        nonempty = [j for j, y in enumerate(col_docs) if y]
        col_batches = [
            [nonempty[k] for k in batch]
            for batch in token_batches([len(col_docs[j]) for j in nonempty], self.token_budget)
        ]
        # plain caches can be batched with padding and sliced; others run one prefix at a time
        prefix_budget = self.token_budget if self._plain_cache else 0
        for prefix_batch in token_batches([len(p) for p in prefixes], prefix_budget):
            prefix_pass = self._forward([prefixes[i] for i in prefix_batch], final=None)
            next_logprobs = prefix_pass.next_logprobs
            if next_logprobs is None:  # final=None always returns them; this keeps mypy informed
                raise RuntimeError("prefix pass returned no next-token distribution")
            for slot, row in enumerate(prefix_batch):
                row_bits[row] = prefix_pass.bits[slot]
                first_bits = -next_logprobs[slot, first].double() / _LN2
                pair[row] = row_bits[row] + first_bits.cpu().numpy()
                if not col_batches:
                    continue
                prefix = prefix_layers(prefix_pass.cache, slot, len(prefixes[row]))
                for batch in col_batches:
                    inputs = [col_docs[j] for j in batch]
                    result = self._forward(inputs, final=[self._eos] * len(batch), prefix=prefix)
                    pair[row, batch] += result.bits
        return row_bits, pair

    # ---------------------------------------------------------------- forward passes

    def _forward(
        self,
        sequences: list[list[int]],
        *,
        final: list[int] | None,
        prefix: PrefixLayers | None = None,
    ) -> _Pass:
        """Run right-padded ``sequences`` (after ``prefix``'s cached positions, if any).

        Each position predicts the next input; the last predicts ``final[row]``, or, when ``final``
        is None, its float32 log-distribution is returned along with the pass's KV cache.
        """
        import torch

        batch = pad_batch(sequences, self._pad, final_targets=final)
        rows, width = batch.input_ids.shape
        past = 0 if prefix is None else int(prefix[0][0].shape[2])
        attention = batch.attention_mask
        if past:
            attention = torch.cat([torch.ones(rows, past, dtype=attention.dtype), attention], 1)
        positions = (torch.arange(width, device=self.device) + past).unsqueeze(0).expand(rows, -1)
        keep = batch.keep.to(self.device)
        cache = None
        if prefix is not None:
            cache = expanded_cache(self.model.config, prefix, rows, zero_copy=self._plain_cache)
        output = self.model(
            input_ids=batch.input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            position_ids=positions,
            use_cache=prefix is not None or final is None,
            logits_to_keep=keep if self._mask_logits else 0,
            **{self._cache_argument: cache},
        )
        logits = output.logits if self._mask_logits else output.logits[keep]
        targets = batch.targets.to(self.device)
        row_of = batch.row_of_kept.to(self.device)
        next_logprobs = None
        if not batch.score_last:
            is_last = batch.is_last.to(self.device)
            next_logprobs = torch.log_softmax(logits[is_last].float(), dim=-1)
            scored = ~is_last
            logits, targets, row_of = logits[scored], targets[scored], row_of[scored]
        nats = torch.zeros(rows, dtype=torch.float64, device=self.device)
        nats.index_add_(0, row_of, self._nll_nats(logits, targets).double())
        self.counters.model_tokens += batch.real_tokens
        self.counters.padded_tokens += batch.padded_tokens
        self.counters.forward_passes += 1
        return _Pass(
            bits=(nats / _LN2).cpu().numpy(),
            next_logprobs=next_logprobs,
            cache=output_cache(output) if final is None else None,
        )

    @staticmethod
    def _nll_nats(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """−ln p(target) per position, from a float32 log-softmax, in vocabulary-sized chunks."""
        import torch
        import torch.nn.functional as F

        if logits.shape[0] == 0:
            return torch.zeros(0, dtype=torch.float32, device=logits.device)
        step = max(1, _LOGIT_CHUNK_ELEMENTS // max(1, logits.shape[-1]))
        return torch.cat(
            [
                F.cross_entropy(
                    logits[i : i + step].float(), targets[i : i + step], reduction="none"
                )
                for i in range(0, logits.shape[0], step)
            ]
        )

    def _supports_logit_mask(self) -> bool:
        """Whether the model slices logits by a boolean (batch, seq) ``logits_to_keep`` mask
        (transformers' ``slice_logits_to_keep``), returning (n_true, vocab) logits; older model
        code gets full logits, sliced afterwards."""
        import torch

        ids = torch.tensor([[self._bos, self._eos]], device=self.device)
        mask = torch.tensor([[False, True]], device=self.device)
        try:
            logits = self.model(input_ids=ids, use_cache=False, logits_to_keep=mask).logits
        except (TypeError, ValueError, IndexError, RuntimeError):
            return False
        return logits.ndim == 2 and logits.shape[0] == 1


__all__ = ["TRUNCATION_POLICIES", "LMCounters", "LMScorer"]

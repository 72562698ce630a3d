"""A causal language model as a compressor: code lengths in bits from a Hugging Face causal LM.

Contract (``shared/DESIGN.md`` §2, exact), with b = BOS (EOS where the model has none), e = EOS and
``ids(s) = tokenizer(s, add_special_tokens=False).input_ids`` (truncated, see below):

- ``C(x)  = Σ −log2 p`` over ``ids(x) + [e]`` given ``[b]``;
- ``C(xy) = Σ −log2 p`` over ``ids(x) + [e] + ids(y) + [e]`` given ``[b]`` = ``C(x) + C(y | x)``.

Log-probabilities come from float32 logits and a float32 log-softmax, whatever the weights' dtype.

Paths (``path`` attribute; the README's model-family table says which models take which):

- ``prefix-cached`` (default where the model allows): a tile's row documents ``[b] x [e]`` run in
  batched passes that give C(x), each row's KV cache and the distribution of every column's
  first token; then the columns of *many rows at once* run as continuations against their rows'
  gathered prefixes. Each pair costs ``|ids(y)|`` tokens instead of ``|x| + |y|``;
- ``naive``: ``[b] x [e] y [e]`` through the model for every pair, same batching and masks (for
  benchmarks and cross-checks; ``prefix_cache=False``);
- ``plain``: as naive, but with the model's own masks from a padding mask: for architectures
  whose attention the fast path cannot express (linear or chunked attention, shared KV), or
  whose fast path disagreed with the model at load time.

Truncation (never silent): every document is cut to ``max_doc_tokens`` tokens, by default
``(context - 3) // 2`` so that ``[b] x [e] y [e]`` fits the context; the policy and the limit are
in the fingerprint, :meth:`scored_bytes` gives the bytes a code length covers, and
``counters.documents_truncated`` counts the cuts. ``truncation="error"`` refuses long documents
with :class:`~nncd_ray.errors.DocumentTooLong` instead.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import ConfigError, DocumentTooLong, InputError
from nncd_ray.scorers.base import BaseScorer, TileScores
from nncd_ray.scorers.lm.devices import device_kind

if TYPE_CHECKING:
    from nncd_ray.scorers.lm.loading import LoadedModel
    from nncd_ray.scorers.lm.passes import PassRunner
    from nncd_ray.scorers.lm.tile import PendingTile, PreparedTile

log = logging.getLogger(__name__)

TRUNCATION_POLICIES = ("truncate", "error")
PATHS = ("prefix-cached", "naive", "plain")
_LN2 = math.log(2.0)
# tokenised documents kept per scorer (an actor sees the same columns in tile after tile)
_IDS_CACHE_SIZE = 1 << 16
# the token budget never halves below this (a pass that small running out of memory is fatal)
_SMALLEST_BUDGET = 256


@dataclass(frozen=True, kw_only=True)
class _Encoded:
    ids: tuple[int, ...]
    # UTF-8 bytes of the text the kept tokens cover (all of it unless truncated)
    scored_bytes: int
    truncated: bool
    # tokens of the whole text, before truncation
    tokens: int


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
        token_budget: int | str = "auto",
        trust_remote_code: bool = False,
        prefix_cache: bool = True,
    ) -> None:
        from nncd_ray.scorers.lm.devices import resolve_device, resolve_dtype
        from nncd_ray.scorers.lm.loading import load_causal_lm

        if truncation not in TRUNCATION_POLICIES:
            raise ConfigError(
                f"unknown truncation policy {truncation!r}; choose one of: "
                f"{', '.join(TRUNCATION_POLICIES)}"
            )
        if token_budget != "auto" and (
            isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1
        ):
            raise ConfigError(
                f"token_budget must be a positive integer or 'auto', not {token_budget!r}"
            )
        torch_device = resolve_device(device)
        if dtype == "auto" and model in (None, "embedded"):
            # 4.2 M parameters: half precision would save nothing, and float32 gives the same
            # code lengths (and k-NN) on a GPU as on a CPU
            dtype = "fp32"
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
        self.device = torch_device
        self.model = self.loaded.model
        self.tokenizer = self.loaded.tokenizer
        self.parameters: int = self.loaded.parameters
        self._bos, self._eos = self.loaded.bos_id, self.loaded.eos_id
        # padding is never attended to by a real token; EOS is always inside the embedding table
        self._pad = self._eos
        self._ids_cache: OrderedDict[str, _Encoded] = OrderedDict()
        self._encode_lock = threading.Lock()
        self._build_runners(prefix_cache)
        self.token_budget: int = (
            self._auto_budget() if token_budget == "auto" else int(token_budget)
        )

    # ---------------------------------------------------------------- set-up

    def _build_runners(self, prefix_cache: bool) -> None:
        import torch

        from nncd_ray.scorers.lm.attention import attention_layout
        from nncd_ray.scorers.lm.budget import pass_cost, prefix_capacity
        from nncd_ray.scorers.lm.fast_attention import install
        from nncd_ray.scorers.lm.head import install_scoring_head, logits_pass_through
        from nncd_ray.scorers.lm.loading import cache_argument
        from nncd_ray.scorers.lm.passes import PassCounters, PassRunner

        self.counters = PassCounters()
        # prefix positions a tile may cache at once (row groups); fixed for the scorer's life
        self._prefix_capacity = prefix_capacity(self.model, self.device)
        # what the batch plans minimise (packed where the runner is fast: see _plan)
        self._pass_cost = pass_cost(self.model, self.device)
        self.head = install_scoring_head(self.model)
        self.layout = attention_layout(self.model)
        common: dict[str, Any] = {
            "model": self.model,
            "head": self.head,
            "device": self.device,
            "cache_argument": cache_argument(self.model),
            "counters": self.counters,
        }
        self._plain: PassRunner = PassRunner(layout=None, **common)
        self._masked: PassRunner | None = None
        if self.layout is not None:
            fast = install(self.model, self.layout, self.device)
            self._masked = PassRunner(layout=self.layout, fast=fast, **common)
        with torch.inference_mode():
            if self.head is not None:
                self.head.fused = logits_pass_through(self.model, self.head, self._bos, self._eos)
            if self._masked is None:
                self.path = "plain"
            elif not prefix_cache:
                self.path = "naive"
            else:
                self.path = "prefix-cached"
                if not self._fast_path_agrees():
                    self.path = "plain"
        self.counters.forward_passes = self.counters.model_tokens = 0
        self.counters.padded_tokens = self.counters.prefix_slots = self.counters.fast_passes = 0

    def _auto_budget(self) -> int:
        from nncd_ray.scorers.lm.budget import auto_token_budget

        fused = self.head is not None and self.head.fused
        return auto_token_budget(self.model, self.device, fused_head=fused)

    def _fast_path_agrees(self) -> bool:
        """Score a small synthetic tile on the prefix-cached path and, one unpadded sequence at
        a time, with the model's own masks; False (and a warning) when they disagree, so an
        architecture the fast path gets wrong falls back to the plain path instead of giving
        wrong code lengths. Documents are longer than a small sliding window, so windows count."""
        from nncd_ray.scorers.lm.tile import launch_tile

        window = self.layout.window if self.layout is not None else None
        length = 24 if window is None or window > 200 else window + 8
        length = min(length, self.max_doc_tokens)
        vocab = int(self.model.config.vocab_size)
        ids = [tuple(int((7 * i + 3 * k + 11) % vocab) for i in range(length - k)) for k in (0, 3)]
        rows, cols = ids, [ids[1][:-2], ids[0][1:]]
        fast = launch_tile(
            self._plan(rows, cols, path="prefix-cached", budget=4096, want_cols=True),
            self._runner("prefix-cached"),
        ).result()
        slow = launch_tile(
            self._plan(rows, cols, path="plain", budget=0, want_cols=True), self._runner("plain")
        ).result()
        dtype = next(self.model.parameters()).dtype
        tolerance = (
            1e-3 if str(dtype) == "torch.float32" else 2e-2 * float(np.abs(slow.pair_bits).max())
        )
        error = max(
            float(np.abs(fast.pair_bits - slow.pair_bits).max()),
            float(np.abs(fast.row_bits - slow.row_bits).max()),
        )
        if error <= tolerance:
            return True
        log.warning(
            "the prefix-cached path disagrees with the model's own forward pass by %.3g bits for "
            "%s (%s); scoring every pair in full instead (slower, exact)",
            error,
            type(self.model).__name__,
            self.layout.describe() if self.layout is not None else "no layout",
        )
        return False

    # ---------------------------------------------------------------- public API

    @property
    def half_precision(self) -> bool:
        return self.loaded.fingerprint["dtype"] != "float32"

    def fingerprint(self) -> dict[str, Any]:
        """What changes the numbers: weights, tokenizer, dtype, special tokens, truncation.

        In float32, device, token budget and path change code lengths only by float32 rounding
        (≤ 1e-4 bits measured). In bf16/fp16 the rounding of the model's body depends on the
        shapes of the batches a pair is scored in (up to ~0.7 bits on the embedded model), so the
        batch plan is part of the fingerprint: path, token budget, planner version and device
        kind (and on CUDA the attention kernels allowed); a store then never mixes tiles planned
        differently.
        """
        fingerprint: dict[str, Any] = {
            "compressor": self.name,
            **self.loaded.fingerprint,
            "bos_id": self._bos,
            "eos_id": self._eos,
            "max_doc_tokens": self.max_doc_tokens,
            "truncation": self.truncation,
            "code": "C(x)=[b]x[e]; C(xy)=[b]x[e]y[e]; float32 log-softmax; bits",
        }
        if self.half_precision:
            from nncd_ray.scorers.lm.plan import PLAN_VERSION

            fingerprint["logits"] = "float32"
            fingerprint["batch_plan"] = {
                "path": self.path,
                "token_budget": self.token_budget,
                "planner": PLAN_VERSION,
                "device": device_kind(self.device),
            }
            if self.device.type == "cuda":  # another attention kernel rounds differently
                from nncd_ray.scorers.lm.devices import CUDA_ATTENTION_KERNELS
                from nncd_ray.scorers.lm.fast_attention import FAST_PLAN

                kernels = CUDA_ATTENTION_KERNELS
                fingerprint["batch_plan"]["attention_kernels"] = kernels and list(kernels)
                if self._masked is not None and self._masked.fast:
                    fingerprint["batch_plan"]["attention"] = FAST_PLAN
        return fingerprint

    def document_bits(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """C(x) of each text: ``(len(texts),) float64`` bits."""
        return self._tile([], texts, want_cols=True).col_bits

    def pair_bits(self, rows: Sequence[str], cols: Sequence[str]) -> NDArray[np.float64]:
        """C(x y), x = row, y = column: ``(len(rows), len(cols)) float64`` bits."""
        return self._tile(rows, cols, want_cols=False).pair_bits

    def score_tile(self, rows: Sequence[str], cols: Sequence[str]) -> TileScores:
        """Row and column C(·) and every pair's C(xy); ``work_units`` = model tokens used."""
        return self._tile(rows, cols, want_cols=True)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """``ids(s)`` of each text after the truncation policy (token ids, no special tokens)."""
        return [list(e.ids) for e in self._encode(texts)]

    def scored_bytes(self, texts: Sequence[str]) -> NDArray[np.int64]:
        """UTF-8 bytes of each text that its code length covers (fewer than the text's own when
        it was truncated: the characters its kept tokens span)."""
        return np.array([e.scored_bytes for e in self._encode(texts)], dtype=np.int64)

    def stats(self) -> dict[str, Any]:
        """Counters plus the parameter count, path and token budget, JSON-able."""
        return {
            **asdict(self.counters),
            "parameters": self.parameters,
            "path": self.path,
            "token_budget": self.token_budget,
        }

    def forget_documents(self) -> None:
        """Drop the token ids kept across tiles (a benchmark's timed run then tokenizes)."""
        with self._encode_lock:
            self._ids_cache.clear()

    # ---------------------------------------------------------------- encoding

    def _encode(self, texts: Sequence[str]) -> list[_Encoded]:
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
        with self._encode_lock:  # a worker may prepare one tile while launching another
            missing = list(dict.fromkeys(t for t in texts if t not in self._ids_cache))
            if missing:
                self._tokenize(missing)
            out = []
            for position, text in enumerate(texts):
                encoded = self._ids_cache[text]
                self._ids_cache.move_to_end(text)
                if encoded.truncated:
                    if self.truncation == "error":
                        preview = text[:40].replace("\n", " ")
                        raise DocumentTooLong(
                            f"document number {position} ({preview!r}...) has {encoded.tokens} "
                            f"tokens, more than max_doc_tokens={self.max_doc_tokens}; shorten it, "
                            "raise max_doc_tokens, or use truncation='truncate'"
                        )
                    self.counters.documents_truncated += 1
                out.append(encoded)
            while len(self._ids_cache) > _IDS_CACHE_SIZE:
                self._ids_cache.popitem(last=False)
        return out

    def _tokenize(self, texts: list[str]) -> None:
        # verbose=False: no warning about model_max_length, the policy here handles length
        encoded = self.tokenizer(
            texts, add_special_tokens=False, verbose=False, return_offsets_mapping=True
        )
        for text, ids, offsets in zip(
            texts, encoded["input_ids"], encoded["offset_mapping"], strict=True
        ):
            full = len(text.encode("utf-8"))
            if len(ids) <= self.max_doc_tokens:
                self._ids_cache[text] = _Encoded(
                    ids=tuple(ids), scored_bytes=full, truncated=False, tokens=len(ids)
                )
                continue
            kept = ids[: self.max_doc_tokens]
            end = max(int(stop) for _, stop in offsets[: self.max_doc_tokens])
            self._ids_cache[text] = _Encoded(
                ids=tuple(int(t) for t in kept),
                scored_bytes=len(text[:end].encode("utf-8")),
                truncated=True,
                tokens=len(ids),
            )

    # ---------------------------------------------------------------- tiles

    def prepare(
        self, rows: Sequence[str], cols: Sequence[str], *, want_cols: bool = True
    ) -> PreparedTile:
        """The host half of a tile: token ids and pass plans (no device work), so a worker can
        prepare the next tile while the device runs the current one."""
        return self._plan(
            [e.ids for e in self._encode(rows)],
            [e.ids for e in self._encode(cols)],
            path=self.path,
            budget=self.token_budget,
            want_cols=want_cols,
        )

    def launch(self, prepared: PreparedTile) -> PendingTile:
        """Queue a prepared tile's passes on the device; :meth:`PendingTile.result` gives its
        scores. Out of device memory, the token budget halves and the tile starts again (its
        accumulator is its own, so nothing counts twice)."""
        import torch

        from nncd_ray.scorers.lm.tile import launch_tile

        while True:
            if prepared.budget != self.token_budget:  # halved after an earlier tile ran out
                prepared = self._replan(prepared)
            start = self.counters.model_tokens
            try:
                with torch.inference_mode():
                    pending = launch_tile(prepared, self._runner(prepared.path))
            except torch.OutOfMemoryError as exc:
                if self.half_precision:
                    # the budget is part of the store's fingerprint here: it cannot shrink
                    raise ConfigError(
                        f"out of device memory at a token budget of {self.token_budget} in "
                        f"{self.loaded.fingerprint['dtype']}; there the batch plan is part of "
                        "the store's fingerprint, so it cannot shrink within a job: start a new "
                        f"store with --token-budget {self.token_budget // 2}, or use --dtype "
                        "fp32 (whose budget adapts)"
                    ) from exc
                if self.token_budget <= _SMALLEST_BUDGET:
                    raise
                self.token_budget //= 2
                self.counters.oom_backoffs += 1
                log.warning("out of device memory; token budget halved to %d", self.token_budget)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            pending.work_units = self.counters.model_tokens - start
            return pending

    def _tile(self, rows: Sequence[str], cols: Sequence[str], *, want_cols: bool) -> TileScores:
        return self.launch(self.prepare(rows, cols, want_cols=want_cols)).result()

    def score_candidates(
        self, rows: Sequence[str], cols: Sequence[str], candidates: Any, *, reverse: bool = False
    ) -> TileScores:
        """``pair_bits`` (rows, m): C(x y) of each row x and its own candidates y = cols[j]
        (``reverse``: C(y x)), every row in one tile's passes; row and column bits left empty."""
        from nncd_ray.scorers.lm.tile import candidate_tile

        columns, position, wanted = candidate_tile(np.asarray(candidates, dtype=np.int64))
        docs = [self.encode(rows), self.encode([cols[j] for j in columns.tolist()])]
        if reverse:
            docs, wanted = docs[::-1], wanted.T
        plan = self._plan(
            *docs, path=self.path, budget=self.token_budget, want_cols=False, wanted=wanted
        )
        scores = self.launch(plan).result()
        pair = (scores.pair_bits.T if reverse else scores.pair_bits)[
            np.arange(len(rows))[:, None], position
        ]
        return replace(scores, row_bits=np.zeros(0), col_bits=np.zeros(0), pair_bits=pair)

    def _plan(
        self,
        row_docs: Sequence[Sequence[int]],
        col_docs: Sequence[Sequence[int]],
        *,
        path: str,
        budget: int,
        want_cols: bool,
        wanted: NDArray[np.bool_] | None = None,
    ) -> PreparedTile:
        from nncd_ray.scorers.lm.tile import plan_tile

        return plan_tile(
            row_docs,
            col_docs,
            bos=self._bos,
            eos=self._eos,
            pad=self._pad,
            path=path,
            budget=budget,
            want_cols=want_cols,
            prefix_capacity=max(budget, self._prefix_capacity),
            wanted=wanted,
            cost=replace(self._pass_cost, packed=self._runner(path).fast),
        )

    def _replan(self, prepared: PreparedTile) -> PreparedTile:
        return self._plan(
            prepared.row_docs,
            prepared.col_docs,
            path=prepared.path,
            budget=self.token_budget,
            want_cols=prepared.want_cols,
            wanted=prepared.wanted,
        )

    def _runner(self, path: str) -> PassRunner:
        runner = self._plain if path == "plain" else self._masked
        if runner is None:
            raise ConfigError(f"path {path!r} is not available for this model")
        return runner


__all__ = ["PATHS", "TRUNCATION_POLICIES", "LMScorer"]

"""The model's output layer, swapped for one that scores only the positions a pass needs.

A forward pass over ``batch × width`` tokens needs the next-token log-probability at a few known
positions, not ``batch × width × vocab`` logits. :class:`ScoringHead` replaces the model's output
embedding module (the same weight ``Parameter``, so tied weights stay tied): when the scorer has
set a :class:`HeadRequest`, it gathers the requested hidden states by integer index (a boolean
index would synchronise with the host), computes their logits in float32 and, when the model
passes logits through unchanged ("fused"), turns them into −ln p in vocabulary-sized chunks
right there, so no ``(positions, vocab)`` tensor outlives a chunk. Models that post-process
logits (Gemma 2's soft-capping, a logit scale) get the float32 logits back instead, and the
scorer takes −ln p after the model's own post-processing.

Float32 logits from bf16/fp16 weights: the matmul of half-precision inputs accumulates in float32
anyway, so asking for a float32 *output* (``torch.mm(..., out_dtype=torch.float32)`` on CUDA)
removes that last rounding step (up to 0.06 at magnitudes 16-32 in bf16) at the same speed;
elsewhere the head computes in float32. The model's body still rounds in its own dtype.

Padded vocabulary on a GPU: a vocabulary that is not a multiple of :data:`HEAD_COLUMN_MULTIPLE`
(GPT-2's 50,257) leaves the logits' rows misaligned, and cuBLAS falls back to a kernel that ran
5.6× slower on an H100 (32,768 × 768 by 768 × 50,257 bf16 → float32: 25.9 ms, 98 TFLOP/s; with
50,304 columns 4.6 ms). There the head multiplies by a copy of the weight padded with zero rows
and gives the padding columns −inf (fused) or slices them off (logits returned to the model), so
the code lengths are those of the model's own vocabulary.

With no request set the head is the model's own layer, so calling the model directly still
works (tests use it for reference code lengths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# float32 logits per chunk (elements) when the head computes −ln p itself: bounds its memory.
# On a CPU small chunks stay in cache (a 256 MB chunk is mostly page faults); a GPU wants few
# large kernels.
LOGIT_CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}
# the head's output columns are padded to a multiple of this on these device types
HEAD_COLUMN_MULTIPLE = 128
PADDED_HEAD_DEVICES: tuple[str, ...] = ("cuda",)


@dataclass(frozen=True, kw_only=True)
class HeadRequest:
    """What one pass asks of the head (all int64 tensors on the model's device).

    ``positions`` (n,): flat indices into the pass's ``batch × width`` hidden states, each
    predicting ``targets`` (n,). ``dist_positions`` (d,): positions whose −ln p of every token in
    ``dist_targets`` (t,) is wanted (a prefix's last position against every column's first token).
    """

    positions: torch.Tensor
    targets: torch.Tensor
    dist_positions: torch.Tensor | None = None
    dist_targets: torch.Tensor | None = None


@dataclass(frozen=True, kw_only=True)
class HeadResult:
    """−ln p in nats, float32: ``nll`` (n,) for the requested positions, ``dist_nll`` (d, t)."""

    nll: torch.Tensor
    dist_nll: torch.Tensor | None


def target_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−ln p (float32) of ``targets`` (n,) under ``logits`` (n, vocab), in float32."""
    # cross_entropy fuses the log-softmax and the gather (about 2x faster than logsumexp on CPU)
    return F.cross_entropy(logits.float(), targets, reduction="none")


def tokens_nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``(n, t)`` −ln p (float32) of each of ``tokens`` (t,) under each row of ``logits``."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1)[:, None] - logits.index_select(1, tokens)


class ScoringHead(torch.nn.Module):
    """Stands in for the model's output layer; see the module docstring."""

    def __init__(self, head: torch.nn.Linear, *, half_output_float: bool) -> None:
        super().__init__()
        self.head = head
        # torch.mm(..., out_dtype=float32) exists for half inputs (CUDA only, recent torch)
        self._half_output_float = half_output_float
        self._float_weight: torch.Tensor | None = None
        self.vocab = int(head.weight.shape[0])
        # (weight, bias) with zero rows up to a multiple of HEAD_COLUMN_MULTIPLE, or None
        self._padded = _padded_head(head)
        self.request: HeadRequest | None = None
        # compute −ln p inside the head (only when the model passes logits through unchanged)
        self.fused = False
        self.result: HeadResult | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.head.bias

    def float_logits(self, hidden: torch.Tensor, *, padded: bool = False) -> torch.Tensor:
        """``(n, hidden) -> (n, vocab)`` float32 logits, without rounding to a half type.

        ``padded``: the padded head's columns as they are, the padding's at −inf (for −ln p);
        otherwise exactly the vocabulary's columns."""
        weight, bias = self._padded or (self.head.weight, self.head.bias)
        if weight.dtype == torch.float32:
            logits = F.linear(hidden.float(), weight)
        elif self._half_output_float:
            logits = torch.mm(hidden.to(weight.dtype), weight.t(), out_dtype=torch.float32)
        else:
            if self._float_weight is None:  # a one-off float32 copy (CPU, or older torch)
                self._float_weight = weight.detach().float()
            logits = F.linear(hidden.float(), self._float_weight)
        if bias is not None:
            logits = logits + bias.float()
        if self._padded is None:
            return logits
        if not padded:
            return logits[:, : self.vocab]
        logits[:, self.vocab :] = float("-inf")
        return logits

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        request = self.request
        if request is None:
            return self.head(hidden)
        flat = hidden.reshape(-1, hidden.shape[-1])
        picked = flat.index_select(0, request.positions)
        if request.dist_positions is not None:
            picked = torch.cat([picked, flat.index_select(0, request.dist_positions)])
        if not self.fused:
            return self.float_logits(picked).unsqueeze(0)
        self.result = self._fused_nll(picked, request)
        # the model returns this as its "logits"; the scorer reads self.result instead
        return picked.new_zeros(1, 1, 1)

    def _fused_nll(self, picked: torch.Tensor, request: HeadRequest) -> HeadResult:
        scored = request.positions.shape[0]
        step = max(1, chunk_elements(picked.device) // self.head.weight.shape[0])
        nll = torch.empty(scored, dtype=torch.float32, device=picked.device)
        for start in range(0, scored, step):
            stop = min(start + step, scored)
            nll[start:stop] = target_nll(
                self.float_logits(picked[start:stop], padded=True), request.targets[start:stop]
            )
        dist_nll = None
        if request.dist_targets is not None and picked.shape[0] > scored:
            # a handful of rows (one per prefix), so one chunk
            dist_nll = tokens_nll(
                self.float_logits(picked[scored:], padded=True), request.dist_targets
            )
        return HeadResult(nll=nll, dist_nll=dist_nll)


def logits_pass_through(model: Any, head: ScoringHead, bos: int, eos: int) -> bool:
    """Whether ``model`` returns its output layer's logits unchanged (then ``head`` may compute
    −ln p itself); Gemma 2's soft-capping or a logit scale are not."""
    device = head.weight.device
    probe = torch.randn(1, 2, int(head.weight.shape[0]), device=device)

    def fixed(hidden: torch.Tensor) -> torch.Tensor:
        return probe

    original = head.forward
    head.forward = fixed  # type: ignore[method-assign]
    try:
        ids = torch.tensor([[bos, eos]], device=device)
        logits = model(input_ids=ids, use_cache=False).logits
    finally:
        head.forward = original  # type: ignore[method-assign]
    return bool(logits.shape == probe.shape and torch.equal(logits.float(), probe))


def _padded_head(head: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``head``'s weight and bias with zero rows up to a multiple of :data:`HEAD_COLUMN_MULTIPLE`,
    on the devices of :data:`PADDED_HEAD_DEVICES`; None where no padding is needed."""
    weight = head.weight.detach()
    vocab = int(weight.shape[0])
    if weight.device.type not in PADDED_HEAD_DEVICES or vocab % HEAD_COLUMN_MULTIPLE == 0:
        return None
    columns = -(-vocab // HEAD_COLUMN_MULTIPLE) * HEAD_COLUMN_MULTIPLE
    padded = weight.new_zeros(columns, weight.shape[1])
    padded[:vocab] = weight
    bias = None
    if head.bias is not None:
        bias = head.bias.detach().new_zeros(columns)
        bias[:vocab] = head.bias.detach()
    return padded, bias


def chunk_elements(device: torch.device) -> int:
    """Logit elements per chunk on ``device`` (see ``LOGIT_CHUNK_ELEMENTS``)."""
    return LOGIT_CHUNK_ELEMENTS.get(device.type, LOGIT_CHUNK_ELEMENTS["cpu"])


def half_output_float_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch.mm(a, b, out_dtype=torch.float32)`` works for half inputs here."""
    if dtype == torch.float32:
        return False
    try:
        a = torch.ones(2, 2, dtype=dtype, device=device)
        out = torch.mm(a, a, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return bool(out.dtype == torch.float32)


def install_scoring_head(model: Any) -> ScoringHead | None:
    """Swap the model's output layer for a :class:`ScoringHead`; None when it is not a plain
    ``nn.Linear`` child of the model (then the scorer takes full logits from the model)."""
    head = model.get_output_embeddings()
    if isinstance(head, ScoringHead):
        return head
    if not isinstance(head, torch.nn.Linear):
        return None
    for name, child in model.named_children():
        if child is head:
            parameter = next(model.parameters())
            wrapper = ScoringHead(
                head,
                half_output_float=half_output_float_supported(parameter.device, head.weight.dtype),
            )
            setattr(model, name, wrapper)
            return wrapper
    return None


__all__ = [
    "HEAD_COLUMN_MULTIPLE",
    "LOGIT_CHUNK_ELEMENTS",
    "PADDED_HEAD_DEVICES",
    "HeadRequest",
    "HeadResult",
    "ScoringHead",
    "chunk_elements",
    "install_scoring_head",
    "logits_pass_through",
    "target_nll",
    "tokens_nll",
]

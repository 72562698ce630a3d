"""Next-token probabilities for several token lanes, computed one step at a time with a KV cache.

Encoder and decoder must see bitwise-identical probabilities, or the decoder goes astray at the
first differing bit. The decoder cannot know token t+1 before it has decoded it, so it must run the
model incrementally. The encoder therefore runs the very same :class:`LaneStepper` (same batch
shapes, same cache path, same thread count) instead of one batched forward over the whole text:
a batched forward and an incremental one are mathematically equal but differ in float bits (other
kernels, other reduction orders), which would break decoding.

Lanes: the token stream is cut into ``lanes`` contiguous pieces coded in lockstep, one forward pass
of shape ``(lanes, 1)`` per step. That is one Python/HF call per ``lanes`` tokens instead of per
token, at the price of a fresh context (``[b]``) at the start of each lane.

Window: each lane starts with ``[b]``; when the cache would exceed ``window`` positions, the cache
is rebuilt from ``[b]`` plus the lane's last ``overlap`` tokens in one forward pass (both sides do
the same), and incremental steps continue from there. So once a lane has ``overlap`` tokens behind
it, every prediction sees at least ``overlap`` and at most ``window - 1`` of them.

Thread count: PyTorch's CPU kernels for one-token steps split work across threads in a way that
changes float results (measured: 1, 2 and 4 threads give three different bit patterns), so the
forward passes run under a fixed, recorded number of intra-op threads.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from nncd_ray.scorers.lm.devices import attention_kernels
from nncd_ray.scorers.lm.loading import cache_argument, output_cache

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; restore the old count afterwards.

    The setting is process-wide: other threads of the process that use torch meanwhile see it too.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class LaneStepper:
    """Float32 log-probabilities of the next token of every lane, one step at a time.

    Call :meth:`start` once, then :meth:`advance` with the token just coded in each lane.
    Both return ``(lanes, vocab) float32`` natural-log probabilities (log-softmax in float32 of
    the model's logits, whatever the weights' dtype). Must run under ``torch.inference_mode()``
    and :func:`pinned_threads`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        lanes: int,
        bos_id: int,
        window: int,
        overlap: int,
        device: torch.device,
    ) -> None:
        if not 0 < overlap < window:
            raise ValueError(f"need 0 < overlap ({overlap}) < window ({window})")
        self.model = model
        self.lanes = lanes
        self.bos_id = bos_id
        self.window = window
        self.overlap = overlap
        self.device = device
        # feature detection: not every architecture's forward takes logits_to_keep
        self._keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache_argument = cache_argument(model)
        self._cache: object | None = None
        self._cache_len = 0
        # the last ``overlap`` tokens of every lane, one (lanes,) int64 array per step
        self._recent: deque[np.ndarray] = deque(maxlen=overlap)

    def _log_probs(self, logits: torch.Tensor) -> np.ndarray:
        import torch

        last = logits[:, -1, :].float()
        log_probs: np.ndarray = torch.log_softmax(last, dim=-1).cpu().numpy()
        return log_probs

    def _fresh(self, prefix: np.ndarray) -> np.ndarray:
        """Rebuild the cache from ``[b] + prefix`` (``prefix``: ``(lanes, n)`` int64)."""
        import torch

        bos = np.full((self.lanes, 1), self.bos_id, dtype=np.int64)
        ids = torch.from_numpy(np.concatenate([bos, prefix], axis=1)).to(self.device)
        extra = {"logits_to_keep": 1} if self._keep_last else {}
        mask = torch.ones_like(ids)
        with attention_kernels(self.device):
            out = self.model(input_ids=ids, attention_mask=mask, use_cache=True, **extra)
        self._cache = output_cache(out)
        self._cache_len = ids.shape[1]
        return self._log_probs(out.logits)

    def start(self) -> np.ndarray:
        """Log-probabilities of each lane's first token given ``[b]``: ``(lanes, vocab)``."""
        self._recent.clear()
        return self._fresh(np.zeros((self.lanes, 0), dtype=np.int64))

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        """Feed ``tokens`` ``(lanes,)``; return the next log-probabilities ``(lanes, vocab)``."""
        import torch

        step = np.asarray(tokens, dtype=np.int64).reshape(self.lanes)
        self._recent.append(step)
        if self._cache_len + 1 > self.window:
            return self._fresh(np.stack(list(self._recent), axis=1))
        ids = torch.from_numpy(step.reshape(self.lanes, 1)).to(self.device)
        mask = torch.ones((self.lanes, self._cache_len + 1), dtype=torch.int64, device=self.device)
        with attention_kernels(self.device):  # one new key length per step
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                use_cache=True,
                **{self._cache_argument: self._cache},
            )
        self._cache = output_cache(out)
        self._cache_len += 1
        return self._log_probs(out.logits)

"""Batching for the LM scorer: length-sorted token-budget batches and right-padded inputs.

Pure helpers with no state, so the scorer module keeps to the scoring logic. All lengths are in
tokens. Padding is always on the right: with causal attention a real token never attends to a later
pad, so right padding changes no real token's output (the attention mask is passed anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def token_batches(
    lengths: Sequence[int], budget: int, *, pass_overhead: int | None = None
) -> list[list[int]]:
    """Indices into ``lengths``, sorted by length, cut into batches with ``len(batch) * max_len
    <= budget`` (``budget`` counts padded tokens) that waste the least work.

    Among the cuts of the length-sorted order that respect the budget, the one with the fewest
    padded tokens plus ``pass_overhead`` tokens per forward pass (default ``budget // 64``, the
    fixed cost of a pass) is chosen by dynamic programming, so long and short items are not padded
    together just because the budget would allow it. An item longer than the budget on its own
    gets a batch of one (it cannot be split without changing its code length); ``budget=0`` gives
    batches of one.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if not order:
        return []
    size = np.array([max(1, lengths[i]) for i in order], dtype=np.int64)
    overhead = max(1, budget // 64) if pass_overhead is None else pass_overhead
    # best[j]: least cost of batching the j shortest items; start[j]: where the last batch begins
    best = np.zeros(len(order) + 1, dtype=np.int64)
    start = np.zeros(len(order) + 1, dtype=np.int64)
    for end in range(1, len(order) + 1):
        longest = int(size[end - 1])  # sorted ascending: the batch's last item is its longest
        first = max(0, end - max(1, budget // longest))
        firsts = np.arange(first, end)
        costs = best[first:end] + (end - firsts) * longest + overhead
        pick = int(np.argmin(costs))
        best[end], start[end] = costs[pick], first + pick
    batches: list[list[int]] = []
    end = len(order)
    while end > 0:
        batches.append(order[int(start[end]) : end])
        end = int(start[end])
    return batches[::-1]


@dataclass(frozen=True, kw_only=True)
class PaddedBatch:
    """Right-padded inputs of one forward pass and what each kept logit position predicts.

    ``input_ids``, ``attention_mask``: (batch, max_len) int64; ``keep``: (batch, max_len) bool, the
    real (non-pad) positions, whose logits are computed, in row-major order; ``targets``: (n_keep,)
    int64, the token each kept position predicts (the next input token, or the row's final target);
    ``is_last``: (n_keep,) bool, kept positions that are a row's final input token;
    ``row_of_kept``: (n_keep,) int64 batch row of each kept position; ``score_last``: whether the
    final positions have a target (else their logits are wanted as the distribution of what
    follows).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    keep: torch.Tensor
    targets: torch.Tensor
    is_last: torch.Tensor
    row_of_kept: torch.Tensor
    score_last: bool
    real_tokens: int
    padded_tokens: int


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, *, final_targets: Sequence[int] | None
) -> PaddedBatch:
    """Right-pad ``sequences`` (each non-empty). Position p of a row predicts input p + 1; the
    last position predicts ``final_targets[row]``, or, when ``final_targets`` is None, is left
    unscored so that its distribution can score whatever follows the row (a cached prefix)."""
    import torch

    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if lengths.size == 0 or int(lengths.min()) < 1:
        raise ValueError("pad_batch needs at least one sequence and no empty ones")
    if final_targets is not None and len(final_targets) != len(sequences):
        raise ValueError(f"{len(final_targets)} final targets for {len(sequences)} sequences")
    width = int(lengths.max())
    ids = np.full((len(sequences), width + 1), pad_id, dtype=np.int64)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = sequence
        if final_targets is not None:
            ids[row, len(sequence)] = final_targets[row]
    real = np.arange(width)[None, :] < lengths[:, None]
    rows, cols = np.nonzero(real)  # row-major: the order in which boolean slicing returns logits
    return PaddedBatch(
        input_ids=torch.from_numpy(np.where(real, ids[:, :width], pad_id)),
        attention_mask=torch.from_numpy(real.astype(np.int64)),
        keep=torch.from_numpy(real),
        targets=torch.from_numpy(ids[rows, cols + 1]),
        is_last=torch.from_numpy(cols == lengths[rows] - 1),
        row_of_kept=torch.from_numpy(rows.astype(np.int64)),
        score_last=final_targets is not None,
        real_tokens=int(lengths.sum()),
        padded_tokens=int(width * len(sequences)),
    )


__all__ = ["PaddedBatch", "pad_batch", "token_batches"]

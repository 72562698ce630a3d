"""Host-side plans of the scorer's forward passes: pure numpy, no torch, no model.

A tile's work is two kinds of sequences:

- **documents** ``[b] + ids(d) + [e]`` run from position 0: they give C(d) (every position but the
  last predicts the next token), and for a row document also its prefix KV cache and the
  distribution after its final ``e``, which scores each column's first token;
- **continuations** ``ids(y)`` after a cached row prefix, at true positions ``len(prefix) + j``:
  each position predicts the next token, the last one ``e``; these carry C(y | x).

Items are cut into passes by :func:`~nncd_ray.scorers.lm.batching.batch_order` (ordered by
width, the cheapest cuts under a :class:`~nncd_ray.scorers.lm.batching.PassCost`). Rows of many
documents and the columns of many rows share a pass: there is no loop over rows on the device
side, and none over items on the host (a pass's arrays are filled by indexing one flat array of
token pieces, :class:`Pieces`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nncd_ray.scorers.lm.batching import DEFAULT_COST, IntArray, PassCost, batch_order

# names the planner's rules below: in half precision the batches a pair is scored in change its
# code length by rounding, so a store records this with its token budget (see LMScorer)
PLAN_VERSION = "cost-model-dp/4"


@dataclass(frozen=True, kw_only=True)
class PassPlan:
    """One forward pass as host arrays (int64 unless noted); ``batch × width`` inputs.

    ``input_ids``/``positions`` (batch, width): tokens right-padded, each at its true position in
    its own sequence (pads continue the count; they are masked as keys). ``lengths`` (batch,):
    real tokens per row. ``prefix_rows``/``prefix_lengths`` (batch,): the cached prefix each row
    continues (an index into the pass group's prefix store) and its length, or None for passes
    from position 0. ``score_at`` (n,) flat ``row × width + column`` positions whose next token
    ``score_targets`` (n,) is scored into accumulator slot ``score_into`` (n,). ``dist_at`` (d,):
    positions whose distribution over the columns' first tokens goes to tile row ``dist_rows``
    (d,). ``capture_at`` (c,): batch rows whose keys/values go to prefix-store rows
    ``capture_rows`` (c,).
    """

    input_ids: IntArray
    positions: IntArray
    lengths: IntArray
    prefix_rows: IntArray | None
    prefix_lengths: IntArray | None
    prefix_width: int
    score_at: IntArray
    score_targets: IntArray
    score_into: IntArray
    dist_at: IntArray
    dist_rows: IntArray
    capture_at: IntArray
    capture_rows: IntArray

    @property
    def real_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)

    @property
    def batch(self) -> int:
        return int(self.input_ids.shape[0])


_EMPTY = np.zeros(0, dtype=np.int64)


class Pieces:
    """Token sequences in one flat array, so that passes are filled by array indexing."""

    def __init__(self, pieces: Sequence[Sequence[int]]) -> None:
        self.lengths = np.fromiter((len(x) for x in pieces), dtype=np.int64, count=len(pieces))
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        total = int(self.lengths.sum())
        self.flat = (
            np.fromiter((t for x in pieces for t in x), dtype=np.int64, count=total)
            if total
            else np.zeros(1, np.int64)
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def fill(
        self, head: IntArray, tail: IntArray, width: int, pad: int
    ) -> tuple[IntArray, IntArray]:
        """``(len(head), width)`` token ids of pieces ``head`` followed by pieces ``tail`` (-1:
        none), right-padded with ``pad``; and each row's length."""
        head_len = self.lengths[head]
        tail_len = np.where(tail >= 0, self.lengths[tail], 0)
        length = head_len + tail_len
        j = np.arange(width, dtype=np.int64)[None, :]
        in_head = j < head_len[:, None]
        source = np.where(
            in_head,
            self.offsets[head][:, None] + j,
            self.offsets[np.maximum(tail, 0)][:, None] + j - head_len[:, None],
        )
        real = j < length[:, None]
        ids = np.where(real, self.flat[np.clip(source, 0, len(self.flat) - 1)], pad)
        return ids.astype(np.int64, copy=False), length


@dataclass(frozen=True, kw_only=True)
class Documents:
    """Sequences run from position 0, each piece ``head`` then piece ``tail`` (-1: none) of
    ``pieces``. Positions ``0 .. len - 2`` predict the next token (into accumulator slot
    ``into``); a sequence with ``prefix_row >= 0`` is also a row prefix: its keys/values go to
    that prefix-store row and its last position scores the columns' first tokens into row
    ``tile_row`` of the tile's pairs."""

    pieces: Pieces
    head: IntArray
    tail: IntArray
    into: IntArray
    prefix_row: IntArray
    tile_row: IntArray

    @classmethod
    def of(
        cls,
        pieces: Pieces,
        head: IntArray,
        into: IntArray,
        *,
        tail: IntArray | None = None,
        prefix_row: IntArray | None = None,
        tile_row: IntArray | None = None,
    ) -> Documents:
        none = np.full(len(head), -1, dtype=np.int64)
        return cls(
            pieces=pieces,
            head=np.asarray(head, dtype=np.int64),
            tail=none if tail is None else np.asarray(tail, dtype=np.int64),
            into=np.asarray(into, dtype=np.int64),
            prefix_row=none if prefix_row is None else np.asarray(prefix_row, dtype=np.int64),
            tile_row=none if tile_row is None else np.asarray(tile_row, dtype=np.int64),
        )

    def __add__(self, other: Documents) -> Documents:
        if other.pieces is not self.pieces:
            raise ValueError("documents to join must share their pieces")
        return Documents(
            pieces=self.pieces,
            **{
                name: np.concatenate([getattr(self, name), getattr(other, name)])
                for name in ("head", "tail", "into", "prefix_row", "tile_row")
            },
        )

    def __len__(self) -> int:
        return len(self.head)


def document_passes(
    documents: Documents, pad: int, budget: int, cost: PassCost = DEFAULT_COST
) -> list[PassPlan]:
    """Plans for sequences from position 0 (documents, row prefixes, naive pairs)."""
    pieces = documents.pieces
    lengths = pieces.lengths[documents.head] + np.where(
        documents.tail >= 0, pieces.lengths[np.maximum(documents.tail, 0)], 0
    )
    if len(lengths) and int(lengths.min()) < 2:
        raise ValueError("a document sequence needs at least [b] and one token to score")
    plans = []
    for chosen in batch_order(lengths, None, budget, cost=cost):
        width = int(lengths[chosen].max())
        ids, length = pieces.fill(documents.head[chosen], documents.tail[chosen], width, pad)
        j = np.arange(width, dtype=np.int64)[None, :]
        score_at = np.flatnonzero((j < (length - 1)[:, None]).ravel())
        following = np.concatenate([ids[:, 1:], np.full((len(chosen), 1), pad)], axis=1)
        prefixed = np.flatnonzero(documents.prefix_row[chosen] >= 0)
        plans.append(
            PassPlan(
                input_ids=ids,
                positions=np.broadcast_to(np.arange(width), ids.shape).copy(),
                lengths=length,
                prefix_rows=None,
                prefix_lengths=None,
                prefix_width=0,
                score_at=score_at,
                score_targets=following.ravel()[score_at],
                score_into=np.repeat(documents.into[chosen], length - 1),
                dist_at=prefixed * width + length[prefixed] - 1,
                dist_rows=documents.tile_row[chosen][prefixed],
                capture_at=prefixed,
                capture_rows=documents.prefix_row[chosen][prefixed],
            )
        )
    return plans


def continuation_passes(
    *,
    rows: IntArray,
    columns: Pieces,
    column_of: IntArray,
    into: IntArray,
    prefix_lengths: IntArray,
    final: int,
    pad: int,
    budget: int,
    cost: PassCost = DEFAULT_COST,
) -> list[PassPlan]:
    """Plans for continuations: item k is column ``column_of[k]``'s tokens (a piece of
    ``columns``) after prefix-store row ``rows[k]`` (of length ``prefix_lengths[rows[k]]``),
    scored into slot ``into[k]``; each position predicts the next column token, the last one
    ``final`` (e). Every column must have at least one token (an empty one is scored whole by
    its first-token distribution)."""
    widths = columns.lengths[column_of] if len(column_of) else _EMPTY
    if len(widths) and int(widths.min()) < 1:
        raise ValueError("a continuation needs at least one token")
    item_prefix = prefix_lengths[rows] if len(rows) else _EMPTY
    plans = []
    for chosen in batch_order(widths, item_prefix, budget, cost=cost):
        width = int(widths[chosen].max())
        none = np.full(len(chosen), -1, dtype=np.int64)
        ids, lengths = columns.fill(column_of[chosen], none, width, pad)
        j = np.arange(width, dtype=np.int64)[None, :]
        following = np.concatenate([ids[:, 1:], np.full((len(chosen), 1), pad)], axis=1)
        targets = np.where(j < (lengths - 1)[:, None], following, final)
        flat = np.flatnonzero((j < lengths[:, None]).ravel())  # row by row, position by position
        starts = item_prefix[chosen]
        plans.append(
            PassPlan(
                input_ids=ids,
                positions=starts[:, None] + j,
                lengths=lengths,
                prefix_rows=rows[chosen].copy(),
                prefix_lengths=starts.copy(),
                prefix_width=int(starts.max()),
                score_at=flat,
                score_targets=targets.ravel()[flat],
                score_into=np.repeat(into[chosen], lengths),
                dist_at=_EMPTY,
                dist_rows=_EMPTY,
                capture_at=_EMPTY,
                capture_rows=_EMPTY,
            )
        )
    return plans


def row_groups(prefix_lengths: IntArray, capacity: int, room: int = 0) -> list[IntArray]:
    """Rows (indices) in groups whose prefix store ``rows × (longest prefix + room)`` stays
    within ``capacity`` token slots (at least one row per group), shortest prefixes first."""
    order = np.argsort(prefix_lengths, kind="stable")
    groups: list[IntArray] = []
    current: list[int] = []
    for row in order:
        longest = int(prefix_lengths[row]) + room  # ascending: the new row is the longest
        if current and (len(current) + 1) * longest > capacity:
            groups.append(np.asarray(current, dtype=np.int64))
            current = []
        current.append(int(row))
    if current:
        groups.append(np.asarray(current, dtype=np.int64))
    return groups


__all__ = [
    "DEFAULT_COST",
    "PLAN_VERSION",
    "Documents",
    "IntArray",
    "PassCost",
    "PassPlan",
    "Pieces",
    "batch_order",
    "continuation_passes",
    "document_passes",
    "row_groups",
]

"""Host-side plans of the scorer's forward passes: pure numpy, no torch, no model.

A tile's work is two kinds of sequences:

- **documents** ``[b] + ids(d) + [e]`` run from position 0: they give C(d) (every position but the
  last predicts the next token), and for a row document also its prefix KV cache and the
  distribution after its final ``e``, which scores each column's first token;
- **continuations** ``ids(y)`` after a cached row prefix, at true positions ``len(prefix) + j``:
  each position predicts the next token, the last one ``e``; these carry C(y | x).

:func:`batch_order` cuts items, sorted by width (then prefix length), into passes within a token
budget, choosing the cuts that waste the least padding plus a fixed cost per pass, so long and
short items are not padded together and a pass is worth its launch. Rows of many documents and
the columns of many rows share a pass: there is no loop over rows on the device side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]

# names the planner's rules below: in half precision the batches a pair is scored in change its
# code length by rounding, so a store records this with its token budget (see LMScorer)
PLAN_VERSION = "width-bucket-dp/2"
# cost of one prefix slot (a cached key/value a continuation attends to) relative to one input
# token: it is gathered and attended to but runs through no projection or MLP
PREFIX_WEIGHT = 0.125
# prefix slots a pass may attend to, as a multiple of its token budget (bounds the memory of the
# gathered keys/values: per slot about a tenth of an input token's activations)
PREFIX_SLOTS_PER_TOKEN = 4
# fixed cost of a forward pass as a fraction of the token budget: a pass must save more padding
# than this to be worth cutting. Large budgets are the GPU's, where launching a pass costs
# milliseconds of host time (a quarter of a pass); at a CPU's budget of a few thousand tokens a
# pass costs little beyond its tokens (1/32 at 8,192). In between it scales with the budget.
PASS_OVERHEAD_RANGE = (1 / 64, 1 / 4)
PASS_OVERHEAD_SCALE = 262144


def pass_overhead(budget: int) -> float:
    """The fixed cost of a pass at ``budget``, as a fraction of it (see above)."""
    low, high = PASS_OVERHEAD_RANGE
    return min(high, max(low, budget / PASS_OVERHEAD_SCALE))


# most candidate cut points considered per plan (keeps planning O(cuts × window), not O(n²))
MAX_CUTS = 1024
# items are ordered by width in buckets this much apart (relative), then by prefix length, so a
# pass pads neither its inputs nor its gathered prefixes by much
WIDTH_BUCKET = 0.125


def batch_order(
    widths: IntArray,
    prefixes: IntArray | None,
    budget: int,
    *,
    prefix_weight: float = PREFIX_WEIGHT,
    overhead: float | None = None,
) -> list[IntArray]:
    """Indices of the items, in passes.

    Items are ordered by width bucket (``WIDTH_BUCKET`` apart), then prefix length, width and
    index, and cut into passes that hold ``count × max width <= budget`` input tokens and
    ``count × max prefix <= PREFIX_SLOTS_PER_TOKEN × budget`` prefix slots (an item over either
    on its own gets a pass alone), choosing the cuts that minimise ``count × (max width +
    prefix_weight × max prefix)`` plus ``overhead × budget`` per pass (default
    :func:`pass_overhead`; dynamic
    programming over the order). ``budget=0`` gives one item per pass.
    """
    n = len(widths)
    if n == 0:
        return []
    widths = np.maximum(np.asarray(widths, dtype=np.int64), 1)
    prefix = np.zeros(n, np.int64) if prefixes is None else np.asarray(prefixes, np.int64)
    bucket = np.floor(np.log(widths) / np.log1p(WIDTH_BUCKET)).astype(np.int64)
    order = np.lexsort((np.arange(n), widths, prefix, bucket))
    if budget <= 0:
        return [order[i : i + 1] for i in range(n)]
    w, p = widths[order].astype(np.float64), prefix[order].astype(np.float64)
    slot_budget = PREFIX_SLOTS_PER_TOKEN * budget
    cuts = _candidate_cuts(w, p, bucket[order], budget, slot_budget)
    # per segment between consecutive cuts: items, widest item, longest prefix
    counts = np.diff(cuts)
    seg_width = np.maximum.reduceat(w, cuts[:-1])
    seg_prefix = np.maximum.reduceat(p, cuts[:-1])
    per_pass = (pass_overhead(budget) if overhead is None else overhead) * budget
    segments = len(counts)
    best = np.full(segments + 1, np.inf)
    best[0] = 0.0
    start = np.zeros(segments + 1, np.int64)
    items_before = np.concatenate([[0], np.cumsum(counts)])
    for end in range(1, segments + 1):
        lo = max(0, end - MAX_CUTS)
        firsts = np.arange(lo, end)
        items = items_before[end] - items_before[firsts]
        widest = np.maximum.accumulate(seg_width[lo:end][::-1])[::-1]
        longest = np.maximum.accumulate(seg_prefix[lo:end][::-1])[::-1]
        fits = (items * widest <= budget) & (items * longest <= slot_budget)
        allowed = fits | (items == 1)
        allowed[-1] = True  # the last segment alone always fits (the cuts make sure of it)
        cost = items * (widest + prefix_weight * longest)
        total = np.where(allowed, best[firsts] + cost + per_pass, np.inf)
        pick = int(np.argmin(total))
        best[end], start[end] = total[pick], lo + pick
    passes: list[IntArray] = []
    end = segments
    while end > 0:
        first = int(start[end])
        passes.append(order[cuts[first] : cuts[end]])
        end = first
    return passes[::-1]


def _candidate_cuts(
    widths: NDArray[np.float64],
    prefix: NDArray[np.float64],
    bucket: IntArray,
    budget: int,
    slot_budget: int,
) -> IntArray:
    """Where passes may start: every bucket change and every ``step`` items, ``step`` small
    enough that a segment of that many items fits both budgets, at most about ``MAX_CUTS``."""
    n = len(widths)
    fits = min(budget // float(widths.max()), slot_budget // max(float(prefix.max()), 1.0))
    step = max(1, min(int(fits), -(-n // MAX_CUTS)))
    changes = np.flatnonzero(np.diff(bucket)) + 1
    if len(changes) > MAX_CUTS:
        changes = changes[np.linspace(0, len(changes) - 1, MAX_CUTS).astype(np.int64)]
    return np.unique(np.concatenate([[0, n], np.arange(0, n, step), changes])).astype(np.int64)


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


@dataclass(frozen=True, kw_only=True)
class DocumentItem:
    """A sequence run from position 0. Positions ``0 .. len - 2`` predict the next token (into
    accumulator slot ``into``); with ``prefix_row >= 0`` the sequence is also a row prefix: its
    keys/values go to that prefix-store row and its last position scores the columns' first
    tokens into row ``tile_row`` of the tile's pairs."""

    tokens: Sequence[int]
    into: int
    prefix_row: int = -1
    tile_row: int = -1


def document_passes(items: Sequence[DocumentItem], pad: int, budget: int) -> list[PassPlan]:
    """Plans for sequences from position 0 (documents, row prefixes, naive pairs)."""
    lengths = np.array([len(item.tokens) for item in items], dtype=np.int64)
    if len(lengths) and int(lengths.min()) < 2:
        raise ValueError("a document sequence needs at least [b] and one token to score")
    plans = []
    for chosen in batch_order(lengths, None, budget):
        batch = [items[int(i)] for i in chosen]
        width = int(lengths[chosen].max())
        ids = np.full((len(batch), width), pad, dtype=np.int64)
        score_at, score_targets, score_into = [], [], []
        dist_at, dist_rows, capture_at, capture_rows = [], [], [], []
        for slot, item in enumerate(batch):
            tokens = np.asarray(item.tokens, dtype=np.int64)
            size = len(tokens)
            ids[slot, :size] = tokens
            score_at.append(slot * width + np.arange(size - 1))
            score_targets.append(tokens[1:])
            score_into.append(np.full(size - 1, item.into, dtype=np.int64))
            if item.prefix_row >= 0:
                dist_at.append(slot * width + size - 1)
                dist_rows.append(item.tile_row)
                capture_at.append(slot)
                capture_rows.append(item.prefix_row)
        plans.append(
            PassPlan(
                input_ids=ids,
                positions=np.broadcast_to(np.arange(width), ids.shape).copy(),
                lengths=lengths[chosen].copy(),
                prefix_rows=None,
                prefix_lengths=None,
                prefix_width=0,
                score_at=np.concatenate(score_at),
                score_targets=np.concatenate(score_targets),
                score_into=np.concatenate(score_into),
                dist_at=np.asarray(dist_at, dtype=np.int64),
                dist_rows=np.asarray(dist_rows, dtype=np.int64),
                capture_at=np.asarray(capture_at, dtype=np.int64),
                capture_rows=np.asarray(capture_rows, dtype=np.int64),
            )
        )
    return plans


def continuation_passes(
    *,
    rows: IntArray,
    columns: Sequence[Sequence[int]],
    column_of: IntArray,
    into: IntArray,
    prefix_lengths: IntArray,
    final: int,
    pad: int,
    budget: int,
) -> list[PassPlan]:
    """Plans for continuations: item k is column ``column_of[k]``'s tokens after prefix-store row
    ``rows[k]`` (of length ``prefix_lengths[rows[k]]``), scored into slot ``into[k]``; each
    position predicts the next column token, the last one ``final`` (e). Every column must have
    at least one token (an empty one is scored whole by its first-token distribution)."""
    widths = np.array([len(columns[int(c)]) for c in column_of], dtype=np.int64)
    if len(widths) and int(widths.min()) < 1:
        raise ValueError("a continuation needs at least one token")
    item_prefix = prefix_lengths[rows] if len(rows) else _EMPTY
    plans = []
    for chosen in batch_order(widths, item_prefix, budget):
        width = int(widths[chosen].max())
        batch = len(chosen)
        ids = np.full((batch, width), pad, dtype=np.int64)
        targets = np.full((batch, width), final, dtype=np.int64)
        for slot, k in enumerate(chosen):
            tokens = columns[int(column_of[k])]
            ids[slot, : len(tokens)] = tokens
            targets[slot, : len(tokens) - 1] = tokens[1:]
        lengths = widths[chosen]
        real = np.arange(width)[None, :] < lengths[:, None]
        flat = np.flatnonzero(real.ravel())  # row-major: row by row, position by position
        starts = item_prefix[chosen]
        plans.append(
            PassPlan(
                input_ids=ids,
                positions=starts[:, None] + np.arange(width)[None, :],
                lengths=lengths.copy(),
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
    "MAX_CUTS",
    "PASS_OVERHEAD_RANGE",
    "PLAN_VERSION",
    "PREFIX_SLOTS_PER_TOKEN",
    "PREFIX_WEIGHT",
    "WIDTH_BUCKET",
    "DocumentItem",
    "PassPlan",
    "batch_order",
    "continuation_passes",
    "document_passes",
    "pass_overhead",
    "row_groups",
]

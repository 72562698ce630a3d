"""Host-side plans of the scorer's forward passes: pure numpy, no torch, no model.

A tile's work is two kinds of sequences:

- **documents** ``[b] + ids(d) + [e]`` run from position 0: they give C(d) (every position but the
  last predicts the next token), and for a row document also its prefix KV cache and the
  distribution after its final ``e``, which scores each column's first token;
- **continuations** ``ids(y)`` after a cached row prefix, at true positions ``len(prefix) + j``:
  each position predicts the next token, the last one ``e``; these carry C(y | x).

:func:`batch_order` cuts items, ordered by width (in buckets of a few sizes, then prefix
length), into passes within a token budget, choosing the cuts and the order whose passes cost
least under a :class:`PassCost` (padded tokens, attention, gathered prefix slots and a fixed
cost per pass), so long and short items are not padded together and a pass is worth its
launch. Rows of many documents and the columns of many rows share a pass: there is no loop
over rows on the device side, and none over items on the host (a pass's arrays are filled by
indexing one flat array of token pieces, :class:`Pieces`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]

# names the planner's rules below: in half precision the batches a pair is scored in change its
# code length by rounding, so a store records this with its token budget (see LMScorer)
PLAN_VERSION = "cost-model-dp/4"
# cost of one prefix slot (a cached key/value a continuation attends to) relative to one input
# token, when the model's shape is not known: it is gathered and attended to but runs through
# no projection or MLP (LMScorer derives it from its model and device, see PassCost)
PREFIX_WEIGHT = 0.125
# prefix slots a pass may attend to, as a multiple of its token budget (bounds the memory of the
# gathered keys/values: per slot about a tenth of an input token's activations)
PREFIX_SLOTS_PER_TOKEN = 4
# fixed cost of a forward pass as a fraction of the token budget, when the model's cost is not
# known (the CPU's rule; a GPU scorer derives it from its model, see PassCost): a pass must save
# more padding than this to be worth cutting. At a CPU's budget of a few thousand tokens a pass
# costs little beyond its tokens (1/32 at 8,192); at budgets of tens of thousands it was taken
# as a quarter of a pass. In between it scales with the budget. A model-derived cost is kept
# within the same range.
PASS_OVERHEAD_RANGE = (1 / 64, 1 / 4)
PASS_OVERHEAD_SCALE = 262144


def pass_overhead(budget: int) -> float:
    """The fixed cost of a pass at ``budget``, as a fraction of it (see above)."""
    low, high = PASS_OVERHEAD_RANGE
    return min(high, max(low, budget / PASS_OVERHEAD_SCALE))


# most candidate cut points considered per plan (keeps planning O(cuts × window), not O(n²))
MAX_CUTS = 1024
# the orders tried: items by width in buckets this much apart (relative; 0: exact widths), then
# by prefix length. Coarse buckets keep similar prefixes together (few gathered prefix slots),
# fine ones waste less input padding; the planner keeps the order whose passes cost least.
WIDTH_BUCKETS = (0.125, 0.0625, 0.03125, 0.0)


@dataclass(frozen=True, kw_only=True)
class PassCost:
    """What a pass costs the device, in input-token equivalents (the planner minimises it).

    A pass of ``n`` items padded to ``width`` inputs after ``prefix`` cached slots costs
    ``n × (width × (1 + attention × (prefix + width)) + prefix_slot × prefix)`` plus a fixed
    cost: ``overhead_tokens`` (the launch cost of a pass as tokens the device could have run
    meanwhile), kept within :data:`PASS_OVERHEAD_RANGE` of the budget; ``None``:
    :func:`pass_overhead`. ``attention``: one query against one key relative to a token's
    projections and MLP; ``prefix_slot``: gathering and reading one cached key/value relative
    to a token. ``LMScorer`` derives all three from its model's shape and device kind
    (``nncd_ray.scorers.lm.budget.pass_cost``).
    """

    attention: float = 0.0
    prefix_slot: float = PREFIX_WEIGHT
    overhead_tokens: float | None = None

    def per_item(
        self, width: NDArray[np.float64], prefix: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Cost of one item padded to ``width`` after ``prefix`` slots."""
        return width * (1.0 + self.attention * (prefix + width)) + self.prefix_slot * prefix

    def per_pass(self, budget: int) -> float:
        """The fixed cost of one pass at ``budget``, in tokens."""
        if self.overhead_tokens is None:
            return pass_overhead(budget) * budget
        low, high = PASS_OVERHEAD_RANGE
        return min(high * budget, max(low * budget, self.overhead_tokens))


DEFAULT_COST = PassCost()


def batch_order(
    widths: IntArray,
    prefixes: IntArray | None,
    budget: int,
    *,
    cost: PassCost = DEFAULT_COST,
    overhead: float | None = None,
) -> list[IntArray]:
    """Indices of the items, in passes.

    For each order of :data:`WIDTH_BUCKETS` (width bucket, then prefix length, width and index)
    the items are cut into passes that hold ``count × max width <= budget`` input tokens and
    ``count × max prefix <= PREFIX_SLOTS_PER_TOKEN × budget`` prefix slots (an item over either
    on its own gets a pass alone), choosing the cuts that minimise the :class:`PassCost` of the
    passes (dynamic programming over the order); the cheapest order's passes are returned.
    ``overhead`` (a share of the budget) overrides the cost's fixed cost per pass.
    ``budget=0`` gives one item per pass.
    """
    n = len(widths)
    if n == 0:
        return []
    widths = np.maximum(np.asarray(widths, dtype=np.int64), 1)
    prefix = np.zeros(n, np.int64) if prefixes is None else np.asarray(prefixes, np.int64)
    if budget <= 0:
        order = np.lexsort((np.arange(n), widths, prefix, _buckets(widths, WIDTH_BUCKETS[0])))
        return [order[i : i + 1] for i in range(n)]
    per_pass = cost.per_pass(budget) if overhead is None else overhead * budget
    best: tuple[float, list[IntArray]] | None = None
    seen: set[bytes] = set()
    for step in WIDTH_BUCKETS:
        bucket = _buckets(widths, step)
        order = np.lexsort((np.arange(n), widths, prefix, bucket))
        # the same order with the same bucket boundaries (cut candidates) gives the same passes
        key = order.tobytes() + np.flatnonzero(np.diff(bucket[order])).tobytes()
        if key in seen:
            continue
        seen.add(key)
        total, passes = _cut(order, widths, prefix, bucket, budget, cost, per_pass)
        if best is None or total < best[0]:
            best = (total, passes)
    assert best is not None
    return best[1]


def _buckets(widths: IntArray, step: float) -> IntArray:
    if step <= 0:
        return widths
    return np.floor(np.log(widths) / np.log1p(step)).astype(np.int64)


def _cut(
    order: IntArray,
    widths: IntArray,
    prefix: IntArray,
    bucket: IntArray,
    budget: int,
    cost: PassCost,
    per_pass: float,
) -> tuple[float, list[IntArray]]:
    """The cheapest cuts of ``order`` into passes (see :func:`batch_order`) and their cost."""
    w, p = widths[order].astype(np.float64), prefix[order].astype(np.float64)
    slot_budget = PREFIX_SLOTS_PER_TOKEN * budget
    cuts = _candidate_cuts(w, p, bucket[order], budget, slot_budget)
    # per segment between consecutive cuts: items, widest item, longest prefix
    counts = np.diff(cuts)
    seg_width = np.maximum.reduceat(w, cuts[:-1])
    seg_prefix = np.maximum.reduceat(p, cuts[:-1])
    segments = len(counts)
    best = np.full(segments + 1, np.inf)
    best[0] = 0.0
    start = np.zeros(segments + 1, np.int64)
    items_before = np.concatenate([[0], np.cumsum(counts)])
    # a pass ending with segment e holds at most budget / its width items (and slot_budget /
    # its prefix): earlier starts cannot fit, so the search starts at the first that may
    most = np.maximum(
        1, np.minimum(budget // seg_width, slot_budget // np.maximum(seg_prefix, 1.0))
    ).astype(np.int64)
    earliest = np.searchsorted(items_before, items_before[1:] - most, side="left")
    ends = np.arange(1, segments + 1)
    lo = np.minimum(ends - 1, np.maximum(earliest, ends - MAX_CUTS))
    for block in range(0, segments, DP_BLOCK):
        rows = slice(block, min(block + DP_BLOCK, segments))
        args = (items_before, seg_width, seg_prefix, budget, slot_budget, cost)
        work = _pass_work(ends[rows], lo[rows], *args)
        for row, end in enumerate(range(rows.start + 1, rows.stop + 1)):
            first = int(lo[end - 1])
            total = best[first:end] + work[row, : end - first] + per_pass
            pick = int(np.argmin(total))
            best[end], start[end] = total[pick], first + pick
    passes: list[IntArray] = []
    end = segments
    while end > 0:
        first = int(start[end])
        passes.append(order[cuts[first] : cuts[end]])
        end = first
    return float(best[segments]), passes[::-1]


# rows of the dynamic programme whose pass costs are computed at once (bounds their memory)
DP_BLOCK = 128


def _pass_work(
    ends: IntArray,
    lo: IntArray,
    items_before: IntArray,
    seg_width: NDArray[np.float64],
    seg_prefix: NDArray[np.float64],
    budget: int,
    slot_budget: int,
    cost: PassCost,
) -> NDArray[np.float64]:
    """The cost but the fixed one of the passes ending with segments ``ends``: row ``i``, column
    ``k`` the pass of segments ``lo[i] + k`` to ``ends[i] - 1`` (``inf``: it does not fit, or is
    past the row's end). Widest item and longest prefix are suffix maxima; the columns past a
    row's last segment repeat it (every pass of the row holds it)."""
    firsts = lo[:, None] + np.arange(int((ends - lo).max()))[None, :]
    inside = firsts < ends[:, None]
    firsts = np.where(inside, firsts, ends[:, None] - 1)
    items = items_before[ends][:, None] - items_before[firsts]
    widest = np.maximum.accumulate(seg_width[firsts][:, ::-1], axis=1)[:, ::-1]
    longest = np.maximum.accumulate(seg_prefix[firsts][:, ::-1], axis=1)[:, ::-1]
    fits = (items * widest <= budget) & (items * longest <= slot_budget)
    allowed = inside & (fits | (items == 1))
    allowed[np.arange(len(ends)), ends - lo - 1] = True  # the last segment alone always fits
    return np.where(allowed, items * cost.per_item(widest, longest), np.inf)


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
    "MAX_CUTS",
    "PASS_OVERHEAD_RANGE",
    "PLAN_VERSION",
    "PREFIX_SLOTS_PER_TOKEN",
    "PREFIX_WEIGHT",
    "WIDTH_BUCKETS",
    "Documents",
    "PassCost",
    "PassPlan",
    "Pieces",
    "batch_order",
    "continuation_passes",
    "document_passes",
    "pass_overhead",
    "row_groups",
]

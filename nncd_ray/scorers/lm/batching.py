"""How the scorer's items are cut into forward passes: a dynamic programme over items ordered by
width, minimising a :class:`PassCost` (the planner's half that knows nothing of token ids; the
pass arrays themselves are built in :mod:`~nncd_ray.scorers.lm.plan`).

Two kinds of pass are planned. A *padded* pass holds ``count × widest <= budget`` input tokens,
and its cost counts the padding, the attention, the prefix slots gathered and a fixed cost per
pass, so long and short items are not padded together and a pass is worth its launch. A *packed*
pass (``PassCost.packed``: ``fast_attention`` runs it as one sequence of its real tokens, prefixes
read in place) holds items whose real tokens fit the budget; padding and prefix slots cost
nothing there, so its plan is the fewest passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]

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


# a packed pass's host arrays (count × widest, padded) stay within this many token budgets
PACKED_HOST_BUDGETS = 4
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

    ``packed``: the passes run without padding, prefixes read in place (``fast_attention``), so
    a pass holds items whose real tokens fit the budget and costs its real tokens plus the fixed
    cost: the plan is the fewest passes (``attention`` and ``prefix_slot`` are not used), their
    host arrays (``count × widest``) within :data:`PACKED_HOST_BUDGETS` budgets.
    """

    attention: float = 0.0
    prefix_slot: float = PREFIX_WEIGHT
    overhead_tokens: float | None = None
    packed: bool = False

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
    Packed passes (``cost.packed``) hold at most ``budget`` real tokens instead (and ``count ×
    max width <= PACKED_HOST_BUDGETS × budget``), in the first order only (any order has the
    same tokens to pack).
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
    for step in WIDTH_BUCKETS[:1] if cost.packed else WIDTH_BUCKETS:
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
    tokens_before = np.concatenate([[0.0], np.cumsum(np.add.reduceat(w, cuts[:-1]))])
    # a pass ending with segment e holds at most budget / its width items (and slot_budget / its
    # prefix; packed: PACKED_HOST_BUDGETS × budget / its width, and budget real tokens):
    # earlier starts cannot fit, so the search starts at the first that may
    if cost.packed:
        most = np.maximum(1, PACKED_HOST_BUDGETS * budget // seg_width).astype(np.int64)
    else:
        most = np.maximum(
            1, np.minimum(budget // seg_width, slot_budget // np.maximum(seg_prefix, 1.0))
        ).astype(np.int64)
    earliest = np.searchsorted(items_before, items_before[1:] - most, side="left")
    if cost.packed:
        by_tokens = np.searchsorted(tokens_before, tokens_before[1:] - budget, side="left")
        earliest = np.maximum(earliest, by_tokens)
    ends = np.arange(1, segments + 1)
    lo = np.minimum(ends - 1, np.maximum(earliest, ends - MAX_CUTS))
    for block in range(0, segments, DP_BLOCK):
        rows = slice(block, min(block + DP_BLOCK, segments))
        args = (items_before, tokens_before, seg_width, seg_prefix, budget, slot_budget, cost)
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
    tokens_before: NDArray[np.float64],
    seg_width: NDArray[np.float64],
    seg_prefix: NDArray[np.float64],
    budget: int,
    slot_budget: int,
    cost: PassCost,
) -> NDArray[np.float64]:
    """The cost but the fixed one of the passes ending with segments ``ends``: row ``i``, column
    ``k`` the pass of segments ``lo[i] + k`` to ``ends[i] - 1`` (``inf``: it does not fit, or is
    past the row's end). Widest item and longest prefix are suffix maxima; the columns past a
    row's last segment repeat it (every pass of the row holds it). Packed: the real tokens."""
    firsts = lo[:, None] + np.arange(int((ends - lo).max()))[None, :]
    inside = firsts < ends[:, None]
    firsts = np.where(inside, firsts, ends[:, None] - 1)
    items = items_before[ends][:, None] - items_before[firsts]
    widest = np.maximum.accumulate(seg_width[firsts][:, ::-1], axis=1)[:, ::-1]
    if cost.packed:
        work = tokens_before[ends][:, None] - tokens_before[firsts]
        fits = (work <= budget) & (items * widest <= PACKED_HOST_BUDGETS * budget)
    else:
        longest = np.maximum.accumulate(seg_prefix[firsts][:, ::-1], axis=1)[:, ::-1]
        fits = (items * widest <= budget) & (items * longest <= slot_budget)
        work = items * cost.per_item(widest, longest)
    allowed = inside & (fits | (items == 1))
    allowed[np.arange(len(ends)), ends - lo - 1] = True  # the last segment alone always fits
    return np.where(allowed, work, np.inf)


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


__all__ = [
    "DEFAULT_COST",
    "MAX_CUTS",
    "PACKED_HOST_BUDGETS",
    "PASS_OVERHEAD_RANGE",
    "PREFIX_SLOTS_PER_TOKEN",
    "PREFIX_WEIGHT",
    "WIDTH_BUCKETS",
    "IntArray",
    "PassCost",
    "batch_order",
    "pass_overhead",
]

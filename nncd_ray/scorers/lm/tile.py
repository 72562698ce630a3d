"""A tile of the matrix for the LM: planned on the host, launched on the device, read back once.

:func:`plan_tile` does the host work (pass plans from token ids, numpy only), so a worker can
plan the next tile while the device runs the current one. :func:`launch_tile` queues every pass
of the tile; their −ln p accumulate in one device vector (pairs, then rows, then columns) whose
copy to the host starts, non-blocking into pinned memory, as soon as the last pass is queued.
:meth:`PendingTile.result` waits for that copy only. So the device never waits for the host
inside a tile, and the next tile's passes can be queued behind this one's.

On the prefix-cached path the tile's rows are split into groups whose cached prefixes fit the
memory given (usually one group): each group's row documents run first (capturing their keys
and values, and scoring every column's first token after each row), then its continuations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from nncd_ray.scorers.base import TileScores
from nncd_ray.scorers.lm.plan import (
    DEFAULT_COST,
    Documents,
    IntArray,
    PassCost,
    PassPlan,
    Pieces,
    continuation_passes,
    document_passes,
    row_groups,
)

if TYPE_CHECKING:
    import torch

    from nncd_ray.scorers.lm.passes import PassRunner

_LN2 = math.log(2.0)
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, kw_only=True)
class GroupPlan:
    """Rows (tile row numbers) whose prefixes are cached together, and their passes."""

    rows: IntArray
    # prefix-store slots (the group's longest prefix) and the room after them (longest column)
    slots: int
    room: int
    documents: list[PassPlan]
    continuations: list[PassPlan]


@dataclass(frozen=True, kw_only=True)
class PreparedTile:
    """Everything a tile needs from the host, for one path and one token budget."""

    row_docs: Sequence[Sequence[int]]
    col_docs: Sequence[Sequence[int]]
    path: str
    budget: int
    # C(x) and C(y) wanted (score_tile); pair_bits alone skips the columns' own documents
    want_cols: bool
    # prefix-cached path: each column's first token (e for an empty column) and the row groups
    first_tokens: IntArray | None = None
    groups: list[GroupPlan] = field(default_factory=list)
    # the other paths: plain passes from position 0
    passes: list[PassPlan] = field(default_factory=list)
    # (n_rows, n_cols) pairs to score (None: every pair); the others' pair bits are meaningless
    wanted: NDArray[np.bool_] | None = None

    @property
    def n_rows(self) -> int:
        return len(self.row_docs)

    @property
    def n_cols(self) -> int:
        return len(self.col_docs)

    @property
    def cached(self) -> bool:
        return self.first_tokens is not None

    @property
    def slots(self) -> tuple[int, int, int]:
        """Accumulator layout: (rows' offset, columns' offset, length); pairs come first."""
        pairs = self.n_rows * self.n_cols
        return pairs, pairs + self.n_rows, pairs + self.n_rows + self.n_cols


def plan_tile(
    row_docs: Sequence[Sequence[int]],
    col_docs: Sequence[Sequence[int]],
    *,
    bos: int,
    eos: int,
    pad: int,
    path: str,
    budget: int,
    want_cols: bool,
    prefix_capacity: int,
    wanted: NDArray[np.bool_] | None = None,
    cost: PassCost = DEFAULT_COST,
) -> PreparedTile:
    """Plan the passes of a tile (see the module docstring); ``prefix_capacity`` is how many
    prefix positions (with their room) may be cached at once; ``wanted`` (n_rows, n_cols), when
    given, leaves out the pairs it marks False (each row scores its own columns); ``cost`` is
    the device's cost of a pass, which the batch plans minimise."""
    n_rows, n_cols = len(row_docs), len(col_docs)
    row_off, col_off = n_rows * n_cols, n_rows * n_cols + n_rows
    # pieces: each row's [b] x [e], each column's [b] y [e], then each column's y [e] (the tail
    # of a naive pair [b] x [e] y [e])
    cached = path == "prefix-cached" and n_rows > 0 and n_cols > 0
    pieces = Pieces(
        [(bos, *x, eos) for x in row_docs]
        + [(bos, *y, eos) for y in col_docs]
        + ([] if cached else [(*y, eos) for y in col_docs])
    )
    row_ids, col_ids = np.arange(n_rows, dtype=np.int64), np.arange(n_cols, dtype=np.int64)
    nothing = Documents.of(pieces, _EMPTY, _EMPTY)
    columns = Documents.of(pieces, n_rows + col_ids, col_off + col_ids) if want_cols else nothing
    if not cached:
        items = Documents.of(pieces, row_ids, row_off + row_ids) if want_cols else nothing
        pair = np.arange(n_rows * n_cols, dtype=np.int64)
        if wanted is not None:
            pair = pair[np.asarray(wanted, dtype=bool).ravel()]
        pairs = Documents.of(
            pieces, pair // max(n_cols, 1), pair, tail=n_rows + n_cols + pair % max(n_cols, 1)
        )
        return PreparedTile(
            row_docs=row_docs,
            col_docs=col_docs,
            path=path,
            budget=budget,
            want_cols=want_cols,
            passes=document_passes(items + columns + pairs, pad, budget, cost),
            wanted=wanted,
        )
    continuations = Pieces(col_docs)
    prefix_lengths = pieces.lengths[:n_rows]
    nonempty = np.flatnonzero(continuations.lengths > 0).astype(np.int64)
    room = int(continuations.lengths.max(initial=0))
    groups = []
    for index, rows in enumerate(row_groups(prefix_lengths, prefix_capacity, room)):
        items = Documents.of(
            pieces,
            rows,
            row_off + rows,
            prefix_row=np.arange(len(rows), dtype=np.int64),
            tile_row=rows,
        )
        if index == 0:
            items = items + columns
        store_rows = np.repeat(np.arange(len(rows), dtype=np.int64), len(nonempty))
        column_of = np.tile(nonempty, len(rows))
        if wanted is not None:
            keep = wanted[rows[store_rows], column_of]
            store_rows, column_of = store_rows[keep], column_of[keep]
        groups.append(
            GroupPlan(
                rows=rows,
                slots=int(prefix_lengths[rows].max()),
                room=room,
                documents=document_passes(items, pad, budget, cost),
                continuations=continuation_passes(
                    rows=store_rows,
                    columns=continuations,
                    column_of=column_of,
                    into=rows[store_rows] * n_cols + column_of,
                    prefix_lengths=prefix_lengths[rows],
                    final=eos,
                    pad=pad,
                    budget=budget,
                    cost=cost,
                ),
            )
        )
    return PreparedTile(
        row_docs=row_docs,
        col_docs=col_docs,
        path=path,
        budget=budget,
        want_cols=want_cols,
        first_tokens=np.array([y[0] if y else eos for y in col_docs], dtype=np.int64),
        groups=groups,
        wanted=wanted,
    )


def candidate_tile(candidates: NDArray[np.int64]) -> tuple[IntArray, IntArray, NDArray[np.bool_]]:
    """A rectangle for rows that each have their own candidate columns: the columns any row
    wants (sorted indices), each candidate's position among them (the shape of
    ``candidates``) and the (rows, columns) mask of the pairs wanted."""
    columns, position = np.unique(candidates, return_inverse=True)
    position = position.reshape(candidates.shape).astype(np.int64)
    wanted = np.zeros((candidates.shape[0], columns.size), dtype=bool)
    wanted[np.arange(candidates.shape[0])[:, None], position] = True
    return columns.astype(np.int64), position, wanted


class PendingTile:
    """A launched tile: its accumulator on its way to the host."""

    def __init__(self, tile: PreparedTile, host: torch.Tensor, event: torch.cuda.Event | None):
        self.tile = tile
        self._host = host
        self._event = event
        # model tokens the tile ran (set by the scorer; TileScores.work_units)
        self.work_units = 0

    def result(self) -> TileScores:
        """Wait for the copy to the host; C(x), C(y) and C(xy) in bits (float64)."""
        if self._event is not None:
            self._event.synchronize()
        tile = self.tile
        bits: NDArray[np.float64] = self._host.numpy() / _LN2
        row_off, col_off, _ = tile.slots
        row_bits = bits[row_off:col_off]
        pair = bits[:row_off].reshape(tile.n_rows, tile.n_cols)
        if tile.cached:  # continuations and first tokens hold C(y | x) only
            pair = pair + row_bits[:, None]
        return TileScores(
            row_bits=row_bits, col_bits=bits[col_off:], pair_bits=pair, work_units=self.work_units
        )


def launch_tile(tile: PreparedTile, runner: PassRunner) -> PendingTile:
    """Queue every pass of ``tile`` on the runner's device and start the copy of its results."""
    import torch

    from nncd_ray.scorers.lm.passes import PrefixStore

    device = runner.device
    accumulator = torch.zeros(tile.slots[2], dtype=torch.float64, device=device)
    for plan in tile.passes:
        runner.run(plan, accumulator)
    if tile.cached:
        assert tile.first_tokens is not None
        (first_tokens,) = runner.to_device(tile.first_tokens)
        pair_block = accumulator[: tile.slots[0]].view(tile.n_rows, tile.n_cols)
        for group in tile.groups:
            store = PrefixStore(rows=len(group.rows), slots=group.slots, room=group.room)
            for plan in group.documents:
                runner.run(
                    plan, accumulator, store=store, first_tokens=first_tokens, pair_block=pair_block
                )
            for plan in group.continuations:
                runner.run(plan, accumulator, store=store)
            del store  # the allocator reuses its memory in stream order: safe before the copy
    if device.type != "cuda":
        return PendingTile(tile, accumulator.cpu(), None)
    host = torch.empty(accumulator.shape, dtype=accumulator.dtype, pin_memory=True)
    host.copy_(accumulator, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return PendingTile(tile, host, event)


__all__ = [
    "GroupPlan",
    "PendingTile",
    "PreparedTile",
    "candidate_tile",
    "launch_tile",
    "plan_tile",
]

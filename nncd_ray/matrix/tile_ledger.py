"""The tile ledger: the driver's record of one matrix job, and the only writer of the tile
completion markers that resume trusts.

:meth:`TileLedger.begin` reads the markers and plans the tiles still to compute;
:meth:`TileLedger.tile_done` sets a tile's marker in the store after its worker reported the tile's
data written, and counts it. It also keeps the failures, the progress bar and the summary. Only
per-tile metadata passes through here (a few numbers per tile), never scores. Counters are written
to the store's ``progress`` attribute at most every :data:`FLUSH_EVERY_S` seconds (a group attribute
update rewrites ``zarr.json``; on S3 that is one PUT) and at the end; ``tiles_done`` in the store is
the truth, these counters are for ``nncd status``.

A resumed job first verifies the tiles already marked done
(:func:`nncd_ray.matrix.store.integrity.verify_store`: checksums and values, one read of the done
part of the matrix) and recomputes those that fail, so a corrupted store heals by running the same
command again. At the end it counts the documents the compressor truncated (scored bytes below their
UTF-8 bytes) and warns about them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from nncd_ray.matrix.store.chunks import TileProblem, UndecodableChunk
from nncd_ray.matrix.store.integrity import verify_store
from nncd_ray.matrix.store.layout import PER_DOCUMENT_ARRAYS
from nncd_ray.matrix.store.storage_errors import store_errors
from nncd_ray.matrix.store.truncation import TruncationCount, count_truncated

if TYPE_CHECKING:
    from nncd_ray.matrix.store.matrix_store import MatrixStore
    from nncd_ray.matrix.tiling import Tile, TilePlan
    from nncd_ray.matrix.worker import TileResult

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 2.0


@dataclass(frozen=True, kw_only=True)
class MatrixSummary:
    """What one ``compute_matrix`` call did. Times in seconds."""

    store: str
    tiles_total: int
    # tiles computed by this call, tiles already done before it, tiles given up on
    tiles_computed: int
    tiles_skipped: int
    tiles_failed: int
    pairs_computed: int
    # whole call, including cluster start-up and actor (model) loading
    wall_seconds: float
    # pairs_computed / wall_seconds
    pairs_per_second: float
    # from the start of the call until the first worker was ready (cluster, actors, model load)
    startup_seconds: float = 0.0
    # sum over tiles of worker scoring + writing time
    compute_seconds: float = 0.0
    # tokens (LM) or bytes (classical) through the compressor
    work_units: int = 0
    # tiles computed per Ray node id ("local" for the local executor)
    nodes: dict[str, int] = field(default_factory=dict)
    executor: str = "ray"
    actors_started: int = 0
    # actors that died and were replaced
    actor_deaths: int = 0
    # tile attempts that failed (retried or not)
    attempts_failed: int = 0
    # "r,c" -> error text, for tiles given up on
    failed_tiles: dict[str, str] = field(default_factory=dict)
    # tiles marked done that failed verification on resume and were recomputed: "r,c" -> problem
    tiles_reverified: dict[str, str] = field(default_factory=dict)
    # seconds spent verifying the done tiles on resume (0 for a fresh store)
    verify_seconds: float = 0.0
    # distinct documents whose code length covers only part of them (see
    # nncd_ray.matrix.store.truncation)
    documents_truncated: int = 0
    # UTF-8 bytes of every document / the bytes their code lengths cover
    bytes_total: int = 0
    bytes_scored: int = 0
    # "dense" (every pair) or "sparse" (each query's ``candidates`` references only)
    layout: str = "dense"
    candidates: int | None = None
    # a sparse job's pairs (rows x candidates) and those of the whole dense matrix (rows x
    # references): the share of the pairs the scorer computes
    pairs_sparse: int = 0
    pairs_dense: int = 0
    # a sparse job's prefilter phase: name, pairs (or documents) computed, seconds (see
    # nncd_ray.matrix.prefilter.base.PrefilterSummary.to_dict)
    prefilter: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def one_line(self) -> str:
        """``nncd matrix``'s summary line."""
        failed = f", {self.tiles_failed} failed" if self.tiles_failed else ""
        healed = (
            f" ({len(self.tiles_reverified)} of them failed verification and were recomputed)"
            if self.tiles_reverified
            else ""
        )
        truncated = (
            f"; {self.documents_truncated} documents truncated" if self.documents_truncated else ""
        )
        return (
            f"{self.store}: {self.tiles_computed} tiles computed{healed}, {self.tiles_skipped} "
            f"already done{failed} of {self.tiles_total}; {self.pairs_computed:,} pairs in "
            f"{self.wall_seconds:.1f} s ({self.pairs_per_second:,.0f} pairs/s, start-up "
            f"{self.startup_seconds:.1f} s) on {len(self.nodes) or 0} node(s){truncated}"
            f"{self._sparse_note()}"
        )

    def _sparse_note(self) -> str:
        """``; sparse: 40 candidates per query, 40,000 of the 400,000 pairs (10.0%); prefilter
        zstd …`` for a sparse job, else ``""``."""
        if self.layout != "sparse" or not self.pairs_dense:
            return ""
        prefilter = self.prefilter or {}
        probe = prefilter.get("hub_probe")
        hubs = (
            f"; hub probe: {probe['computed']:,} pairs of {len(probe['sample_rows'])} sample "
            f"queries computed, hubs {', '.join(str(i) for i in probe['ids'])}"
            if probe
            else ""
        )
        return (
            f"; sparse: {self.candidates} candidates per query, "
            f"{self.pairs_sparse:,} of the {self.pairs_dense:,} pairs "
            f"({100.0 * self.pairs_sparse / self.pairs_dense:.1f}%) scored; prefilter "
            f"{prefilter.get('name', '?')}: {prefilter.get('work', 'done')}{hubs}"
        )


def _tiles_to_recompute(
    problems: Sequence[TileProblem], mask: NDArray[np.bool_], *, sparse: bool = False
) -> dict[str, str]:
    """``"r,c"`` -> problem of every done tile to recompute (``mask`` marks the done tiles).

    A bad per-document chunk (``row_bits``, ``col_scored_bytes`` …) is rewritten by any tile of
    its band, so it costs a recomputed tile only when every tile of the band is done; otherwise
    the band's missing tile, computed anyway, repairs it. In a sparse store one tile owns each
    column band (:func:`nncd_ray.matrix.store.sparse.column_band_owner`): the problem names it,
    and it is recomputed.
    """
    chosen: dict[str, str] = {}
    for problem in problems:
        side = problem.array.split("_", 1)[0] if problem.array in PER_DOCUMENT_ARRAYS else None
        if sparse and side == "col":
            side = None
        band_done = (
            mask[problem.index_row].all()
            if side == "row"
            else mask[:, problem.index_col].all()
            if side == "col"
            else True
        )
        if band_done:
            chosen.setdefault(problem.key, problem.describe())
    return chosen


class TileLedger:
    """The ledger of one ``compute_matrix`` call on one store (driver side): which tiles are to
    do, which are done (it sets their markers), which failed, and the counters."""

    def __init__(
        self,
        store: MatrixStore,
        plan: TilePlan,
        todo: list[Tile],
        *,
        executor: str,
        progress: bool,
        started: float,
        reverified: dict[str, str] | None = None,
        verify_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self.plan = plan
        self.todo = todo
        self.reverified = dict(reverified or {})
        self.verify_seconds = verify_seconds
        self.truncation: TruncationCount | None = None
        self.executor = executor
        self.started = started
        self.skipped = plan.n_tiles - len(todo)
        self.pairs_skipped = plan.n_pairs - sum(t.pairs for t in todo)
        prior = store.progress
        self.prior_compute_seconds = float(prior.get("compute_seconds", 0.0))
        self.prior_nodes: Counter[str] = Counter(prior.get("nodes", {}))
        self.runs = int(prior.get("runs", 0)) + 1
        self.computed: set[str] = set()
        self.pairs_computed = 0
        self.compute_seconds = 0.0
        self.work_units = 0
        self.nodes: Counter[str] = Counter()
        self.failures: dict[str, str] = {}
        self.attempts_failed = 0
        self.actors_started = 0
        self.actor_deaths = 0
        self.startup_seconds: float | None = None
        self._last_flush = 0.0
        self.bar = tqdm(
            total=sum(t.pairs for t in todo),
            unit="pair",
            unit_scale=True,
            desc=f"tiles 0/{len(todo)}",
            file=sys.stderr,
            disable=not progress,
            dynamic_ncols=True,
            smoothing=0.05,
        )

    @classmethod
    def begin(
        cls,
        store: MatrixStore,
        plan: TilePlan,
        *,
        executor: str,
        progress: bool,
        started: float,
        verify: bool = True,
    ) -> TileLedger:
        """Read the store's markers and plan the tiles still to compute (largest first).

        With ``verify`` (the default), the tiles already marked done are read and checked first
        (:func:`nncd_ray.matrix.store.integrity.verify_store`); those that fail lose their marker
        and are computed again.
        """
        mask = store.done_mask()
        reverified: dict[str, str] = {}
        verify_seconds = 0.0
        if verify and mask.any():
            with store_errors(store.url):
                report = verify_store(store, mask=mask)
            verify_seconds = report.seconds
            reverified = _tiles_to_recompute(report.problems, mask, sparse=store.sparse)
            for key, description in reverified.items():
                index_row, index_col = (int(v) for v in key.split(","))
                store.unmark(index_row, index_col)
                mask[index_row, index_col] = False
                log.warning("failed verification, recomputing it: %s", description)
        done = [(int(r), int(c)) for r, c in zip(*mask.nonzero(), strict=True)]
        todo = plan.tiles(skip=done)
        ledger = cls(
            store,
            plan,
            todo,
            executor=executor,
            progress=progress,
            started=started,
            reverified=reverified,
            verify_seconds=verify_seconds,
        )
        ledger.flush(force=True)
        return ledger

    # -- events --------------------------------------------------------------------------------

    def worker_ready(self) -> None:
        if self.startup_seconds is None:
            self.startup_seconds = time.perf_counter() - self.started

    def tile_done(self, tile: Tile, result: TileResult) -> None:
        """A worker stored the tile's data: set its marker, then count it."""
        if (
            tile.key in self.computed
        ):  # cannot happen: the scheduler hands a tile out once at a time
            log.warning("tile %s reported done twice; ignoring the second report", tile.key)
            return
        self.store.mark_done(tile)
        self.computed.add(tile.key)
        self.failures.pop(tile.key, None)
        self.pairs_computed += tile.pairs
        self.compute_seconds += result.score_seconds + result.write_seconds
        self.work_units += result.work_units
        self.nodes[result.node_id] += 1
        self.bar.update(tile.pairs)
        self.bar.set_description(f"tiles {len(self.computed)}/{len(self.todo)}", refresh=False)
        self.flush()

    def attempt_failed(self, tile: Tile, message: str, attempt: int) -> None:
        self.attempts_failed += 1
        log.warning("tile %s attempt %d failed: %s", tile.key, attempt, message)

    def tile_failed(self, tile: Tile, message: str) -> None:
        """Give up on a tile (after its last attempt); recorded in the store at once."""
        self.failures[tile.key] = message
        self.flush(force=True)

    # -- store attributes ------------------------------------------------------------------------

    def flush(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_flush < FLUSH_EVERY_S:
            return
        self._last_flush = now
        wall = max(now - self.started, 1e-9)
        done = self.skipped + len(self.computed)
        self.store.update_attrs(
            {
                "progress": {
                    "tiles_total": self.plan.n_tiles,
                    "tiles_done": done,
                    "tiles_failed": len(self.failures),
                    "pairs_total": self.plan.n_pairs,
                    "pairs_done": self.pairs_skipped + self.pairs_computed,
                    "compute_seconds": self.prior_compute_seconds + self.compute_seconds,
                    "pairs_per_second": self.pairs_computed / wall,
                    "nodes": dict(self.prior_nodes + self.nodes),
                    "runs": self.runs,
                    "executor": self.executor,
                    "updated_at": time.time(),
                },
                "failed_tiles": dict(self.failures),
            }
        )

    def close(self) -> None:
        self.bar.close()
        self.flush(force=True)
        try:
            with store_errors(self.store.url):
                self.truncation = count_truncated(self.store)
        except UndecodableChunk as exc:  # named by `nncd status --verify`; repaired on resume
            log.warning("cannot count truncated documents: a byte array %s", exc)
            return
        if self.truncation.documents:
            log.warning("%s", self.truncation.warning())

    def summary(self) -> MatrixSummary:
        wall = time.perf_counter() - self.started
        return MatrixSummary(
            store=self.store.url,
            tiles_total=self.plan.n_tiles,
            tiles_computed=len(self.computed),
            tiles_skipped=self.skipped,
            tiles_failed=len(self.failures),
            pairs_computed=self.pairs_computed,
            wall_seconds=wall,
            pairs_per_second=self.pairs_computed / wall if wall > 0 else 0.0,
            startup_seconds=self.startup_seconds if self.startup_seconds is not None else wall,
            compute_seconds=self.compute_seconds,
            work_units=self.work_units,
            nodes=dict(self.nodes),
            executor=self.executor,
            actors_started=self.actors_started,
            actor_deaths=self.actor_deaths,
            attempts_failed=self.attempts_failed,
            failed_tiles=dict(self.failures),
            tiles_reverified=dict(self.reverified),
            verify_seconds=self.verify_seconds,
            documents_truncated=self.truncation.documents if self.truncation else 0,
            bytes_total=self.truncation.bytes_total if self.truncation else 0,
            bytes_scored=self.truncation.bytes_scored if self.truncation else 0,
            layout=self.store.layout,
            candidates=self.plan.n_cols if self.store.sparse else None,
            pairs_sparse=self.plan.n_pairs if self.store.sparse else 0,
            pairs_dense=self.plan.n_rows * self.store.n_refs if self.store.sparse else 0,
        )

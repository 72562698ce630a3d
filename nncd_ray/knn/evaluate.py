"""Evaluate a matrix store: NCD from the raw code lengths, k-NN in row blocks, metrics, bits/byte.

The store is read with plain zarr in the public layout (``shared/DESIGN.md`` §5), one block of
rows at a time and one chunk at a time, so memory is bounded by ``block_rows × n_cols`` (about ten
float64 temporaries of one block while NCD and k-NN run) plus, when a block is smaller than a
tile, the one band of tiles it lies in (kept only if it fits ``BAND_BYTES``; it saves decoding
every chunk once per block) — never by the whole matrix. Measured: 256 MiB peak RSS for a
20,000 × 20,000 store with 1000-wide tiles (``python -m nncd_ray.bench.knn_memory``); 309 MiB
with mutual proximity, which reads the store twice (column statistics first).

A square store is classified leave-one-out (a document is never its own neighbour). ``ncd-min`` on
a square store also reads the transposed block ``pair_bits[:, rows]`` (C(yx)); on a rectangular
store it needs ``pair_bits_reversed``.

An incomplete matrix is refused (:class:`~nncd_ray.errors.IncompleteMatrix`) unless
``allow_partial``; then only rows whose every needed tile is done are classified, and the report
lists the rows skipped.

Everything read is checked (:mod:`nncd_ray.matrix.store.integrity`): a chunk that fails to decode
(checksum, codec) or a done tile holding NaN, infinite or negative code lengths is refused with
:class:`~nncd_ray.errors.CorruptTile`, one line naming the tile, its cells and the fix. Bits per
byte divides by the bytes each code length covers (:mod:`nncd_ray.matrix.store.truncation`).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from nncd_ray.errors import (
    ConfigError,
    CorruptTile,
    IncompleteMatrix,
    InputError,
    StoreError,
    StoreNotFound,
)
from nncd_ray.knn.accumulator import KNNAccumulator
from nncd_ray.knn.labels import LabelCodec
from nncd_ray.knn.mutual_proximity import (
    HUBNESS_REDUCTIONS,
    ColumnMoments,
    mutual_proximity,
    row_moments,
)
from nncd_ray.knn.neighbours import check_ks, mask_own_cells
from nncd_ray.knn.report import EvaluationReport
from nncd_ray.matrix.store.integrity import (
    UndecodableChunk,
    code_length_problem,
    corrupt_array_error,
    corrupt_tile_error,
    fix_hint,
    read_cells,
    tile_problem,
)
from nncd_ray.matrix.store.storage_errors import store_errors
from nncd_ray.matrix.store.truncation import count_sides, group_bytes
from nncd_ray.matrix.tiling import TilePlan
from nncd_ray.ncd import VARIANTS, bits_per_byte, corpus_bits_per_byte, ncd_matrix

FORMAT = "nncd-matrix/1"
# default memory budget of one float64 block of distances; NCD and k-NN hold up to ~10 such
# temporaries at once, so the working set is about 10 × BLOCK_BYTES
BLOCK_BYTES = 16 << 20
# a block smaller than a tile would decode each chunk once per block; up to this size the whole
# band of tiles (tile rows × all columns, float32) is read once and kept while its blocks are done
BAND_BYTES = 128 << 20


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """What to evaluate and how."""

    # store path or fsspec URL (s3://bucket/m.zarr)
    store: str
    # numbers of neighbours, all classified in one pass
    ks: tuple[int, ...] = (1, 3, 5, 7)
    # NCD variant; None = the variant the store was computed for
    variant: str | None = None
    # classify the fully computed rows of an incomplete matrix instead of refusing it
    allow_partial: bool = False
    # rows per block; None = as many as fit BLOCK_BYTES of float64 distances (whole tiles if
    # possible)
    block_rows: int | None = None
    # fsspec options of a remote store (endpoint_url, key, secret, …)
    storage_options: Mapping[str, Any] | None = None
    # "none": k-NN over the NCD itself (shared/bench/PROTOCOL.md); "mp": over its mutual
    # proximity (nncd_ray.knn.mutual_proximity), which takes one more pass over the store
    hubness_reduction: str = "none"


def open_store_group(url: str, storage_options: Mapping[str, Any] | None = None) -> zarr.Group:
    """The store's Zarr group, read-only, checked to be a complete nncd matrix store."""
    remote = "://" in url and not url.startswith("file://")
    kwargs: dict[str, Any] = {"mode": "r", "use_consolidated": False}
    if remote and storage_options:
        kwargs["storage_options"] = dict(storage_options)
    try:
        with store_errors(url):
            group = zarr.open_group(url, **kwargs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreNotFound(f"no matrix store at {url}; compute one with `nncd matrix`") from exc
    except (ValueError, KeyError) as exc:
        raise StoreError(f"cannot open the matrix store at {url}: {exc}") from exc
    if group.attrs.get("format") != FORMAT:
        raise StoreError(
            f"{url} is not a complete nncd matrix store (format {group.attrs.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    return group


def _array(group: zarr.Group, name: str) -> zarr.Array:
    node = group.get(name)
    if not isinstance(node, zarr.Array):
        raise StoreError(f"the matrix store has no {name!r} array")
    return node


def _plain_list(array: zarr.Array, url: str = "the store") -> list[Hashable]:
    """A document array (ids, labels) as a list; one that fails to decode is named."""
    try:
        values: list[Hashable] = read_cells(array, (slice(None),)).tolist()
    except UndecodableChunk as exc:
        raise corrupt_array_error(url, array.basename, str(exc)) from exc
    return values


def read_chunkwise(
    array: zarr.Array, rows: slice, cols: slice, *, url: str = "the store"
) -> NDArray[np.float32]:
    """``array[rows, cols]`` as float32, read one chunk at a time into one preallocated block.

    zarr would otherwise fetch and decode every chunk of the selection concurrently, holding them
    all (for a row block of a wide matrix: a whole band of tiles) on top of the result. A chunk
    that fails to decode raises :class:`~nncd_ray.errors.CorruptTile` naming its tile.
    """
    row_start, row_stop, _ = rows.indices(int(array.shape[0]))
    col_start, col_stop, _ = cols.indices(int(array.shape[1]))
    chunk_rows, chunk_cols = (int(c) for c in array.chunks)
    out = np.empty((row_stop - row_start, col_stop - col_start), dtype=np.float32)
    r = row_start
    while r < row_stop:
        r_next = min(row_stop, (r // chunk_rows + 1) * chunk_rows)
        c = col_start
        while c < col_stop:
            c_next = min(col_stop, (c // chunk_cols + 1) * chunk_cols)
            try:
                part = read_cells(array, (slice(r, r_next), slice(c, c_next)))
            except UndecodableChunk as exc:
                plan = TilePlan(
                    n_rows=int(array.shape[0]), n_cols=int(array.shape[1]), tile=chunk_rows
                )
                problem = tile_problem(
                    plan, r // chunk_rows, c // chunk_cols, array.basename, str(exc)
                )
                raise corrupt_tile_error(url, problem) from exc
            out[r - row_start : r_next - row_start, c - col_start : c_next - col_start] = part
            c = c_next
        r = r_next
    return out


@dataclass(frozen=True, kw_only=True)
class StoreView:
    """Everything about a store except the pair matrix (which is read block by block)."""

    group: zarr.Group
    url: str
    variant: str
    square: bool
    tile: int
    n_rows: int
    n_cols: int
    tiles_done: NDArray[np.bool_]
    row_bits: NDArray[np.float64]
    col_bits: NDArray[np.float64]
    # (array name, axis) -> (band index, band): the one band of tiles kept while blocks use it
    _bands: dict[tuple[str, int], tuple[int, NDArray[np.float32]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def open(
        cls,
        url: str,
        *,
        variant: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> StoreView:
        group = open_store_group(url, storage_options)
        attrs = group.attrs.asdict()
        pair_bits = _array(group, "pair_bits")
        n_rows, n_cols = (int(n) for n in pair_bits.shape)
        tile_attr = attrs.get("tile")
        tile = tile_attr if isinstance(tile_attr, int) else int(pair_bits.chunks[0])
        square = bool(attrs.get("square", False))
        chosen = str(variant or attrs.get("variant") or "ncd")
        if chosen not in VARIANTS:
            raise ConfigError(
                f"unknown NCD variant {chosen!r}; choose one of: {', '.join(VARIANTS)}"
            )
        if chosen == "ncd-min" and not square and "pair_bits_reversed" not in group:
            raise ConfigError(
                f"variant ncd-min needs C(yx) for every pair, and the rectangular store {url} was "
                f"computed for {attrs.get('variant')!r} without pair_bits_reversed; use --variant "
                "ncd or recompute the matrix with --variant ncd-min"
            )
        plan = TilePlan(n_rows=n_rows, n_cols=n_cols, tile=tile)
        done = _read_markers(_array(group, "tiles_done"), url)
        return cls(
            group=group,
            url=url,
            variant=chosen,
            square=square,
            tile=tile,
            n_rows=n_rows,
            n_cols=n_cols,
            tiles_done=done,
            row_bits=_read_document_bits(group, "row", plan, done, url),
            col_bits=_read_document_bits(group, "col", plan, done, url),
        )

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs.asdict())

    @property
    def plan(self) -> TilePlan:
        return TilePlan(n_rows=self.n_rows, n_cols=self.n_cols, tile=self.tile)

    def check_block(
        self, name: str, values: NDArray[np.float32], row_start: int, col_start: int
    ) -> None:
        """Raise :class:`~nncd_ray.errors.CorruptTile` if ``values`` (cells of done tiles of
        ``name`` from ``(row_start, col_start)`` on) holds a NaN, infinite or negative code
        length. Two reductions, no temporaries: NaN makes both comparisons false."""
        if values.size == 0:
            return
        low, high = values.min(), values.max()
        if low >= 0 and high < np.inf:
            return
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(values) & (values >= 0))
        i, j = (int(v) for v in np.argwhere(bad)[0])
        r, c = (row_start + i) // self.tile, (col_start + j) // self.tile
        box = self.plan.tile_at(r, c)
        cells = values[
            max(box.row_start - row_start, 0) : box.row_stop - row_start,
            max(box.col_start - col_start, 0) : box.col_stop - col_start,
        ]
        reason = code_length_problem(cells) or "holds an impossible code length"
        raise corrupt_tile_error(self.url, tile_problem(self.plan, r, c, name, reason))

    def complete_rows(self) -> NDArray[np.bool_]:
        """``(n_rows,) bool``: rows whose every needed tile is done (for square ``ncd-min`` also the
        tiles of the transposed band, which hold C(yx))."""
        done = self.tiles_done
        band_ok = done.all(axis=1)
        if self.square and self.variant == "ncd-min":
            band_ok &= done.all(axis=0)
        return np.repeat(band_ok, self.tile)[: self.n_rows]

    def block_size(self, requested: int | None) -> int:
        if requested is not None:
            if requested < 1:
                raise ConfigError(f"--block-rows must be at least 1, not {requested}")
            return requested
        fitting = max(1, BLOCK_BYTES // (8 * self.n_cols))
        # whole tiles when they fit: each chunk is then decoded once
        return fitting // self.tile * self.tile if fitting >= self.tile else fitting

    def _read(self, name: str, start: int, stop: int, *, axis: int) -> NDArray[np.float32]:
        """Rows (``axis=0``: ``array[start:stop, :]``) or columns (``axis=1``:
        ``array[:, start:stop]``) of a pair array, float32."""
        array = _array(self.group, name)
        extent = (self.n_rows, self.n_cols)
        other = extent[1 - axis]
        band = start // self.tile
        band_start, band_stop = band * self.tile, min(extent[axis], (band + 1) * self.tile)
        use_band = (
            stop - start < band_stop - band_start
            and stop <= band_stop
            and (band_stop - band_start) * other * 4 <= BAND_BYTES
        )
        if not use_band:
            return self._read_checked(array, name, start, stop, axis=axis)
        cached = self._bands.get((name, axis))
        if cached is None or cached[0] != band:
            self._bands.pop((name, axis), None)  # free the old band before reading the next
            data = self._read_checked(array, name, band_start, band_stop, axis=axis)
            cached = self._bands[(name, axis)] = (band, data)
        part = slice(start - band_start, stop - band_start)
        return cached[1][part, :] if axis == 0 else cached[1][:, part]

    def _read_checked(
        self, array: zarr.Array, name: str, start: int, stop: int, *, axis: int
    ) -> NDArray[np.float32]:
        """Rows or columns ``[start, stop)`` of a pair array, every chunk decoded and every value
        checked (only done tiles are ever read here: blocks lie in complete rows)."""
        whole = slice(0, self.n_cols if axis == 0 else self.n_rows)
        rows, cols = (slice(start, stop), whole) if axis == 0 else (whole, slice(start, stop))
        data = read_chunkwise(array, rows, cols, url=self.url)
        self.check_block(name, data, rows.start, cols.start)
        return data

    def distances(self, row_start: int, row_stop: int) -> NDArray[np.float64]:
        """``(row_stop - row_start, n_cols) float64`` NCD of a block of rows."""
        rows = slice(row_start, row_stop)
        block = self._read("pair_bits", row_start, row_stop, axis=0)
        reversed_block: NDArray[Any] | None = None
        if self.variant == "ncd-min":
            if self.square:  # C(y x) with y = column: element [j, i] of the pair matrix
                reversed_block = self._read("pair_bits", row_start, row_stop, axis=1).T
            else:
                reversed_block = self._read("pair_bits_reversed", row_start, row_stop, axis=0)
        return ncd_matrix(
            self.row_bits[rows],
            self.col_bits,
            block,
            self.variant,
            pair_bits_reversed=reversed_block,
        )


def _read_markers(array: zarr.Array, url: str) -> NDArray[np.bool_]:
    """``tiles_done`` as a bool array; a marker chunk that fails to decode is named."""
    try:
        return np.asarray(read_cells(array, (slice(None), slice(None))), dtype=bool)
    except UndecodableChunk:
        pass
    grid_rows, grid_cols = (int(n) for n in array.shape)
    done = np.zeros((grid_rows, grid_cols), dtype=bool)
    for r in range(grid_rows):
        for c in range(grid_cols):
            try:
                done[r, c] = bool(read_cells(array, (slice(r, r + 1), slice(c, c + 1)))[0, 0])
            except UndecodableChunk as exc:
                raise CorruptTile(
                    f"store {url}: the completion marker of tile ({r}, {c}) {exc}; {fix_hint(url)}"
                ) from exc
    return done


def _read_document_bits(
    group: zarr.Group, side: str, plan: TilePlan, done: NDArray[np.bool_], url: str
) -> NDArray[np.float64]:
    """``row_bits`` or ``col_bits`` as float64, checked wherever a done tile wrote them: a chunk
    that fails to decode, or a NaN, infinite or negative C(x) there, is refused naming the first
    done tile of the band (any tile of the band rewrites the chunk)."""
    name = f"{side}_bits"
    array = _array(group, name)
    axis = 0 if side == "row" else 1
    band_done = done.any(axis=1 - axis)
    n = plan.n_rows if axis == 0 else plan.n_cols
    try:  # one request, chunks fetched concurrently; band by band only to name a bad chunk
        whole: NDArray[Any] | None = read_cells(array, (slice(0, n),))
    except UndecodableChunk:
        whole = None
    values = np.full(n, np.nan, dtype=np.float64)
    for band in np.flatnonzero(band_done):
        part = slice(int(band) * plan.tile, min((int(band) + 1) * plan.tile, n))
        first = int(np.flatnonzero(done[band] if axis == 0 else done[:, band])[0])
        where = (int(band), first) if axis == 0 else (first, int(band))
        try:
            chunk = np.asarray(
                whole[part] if whole is not None else read_cells(array, (part,)), dtype=np.float64
            )
        except UndecodableChunk as exc:
            raise corrupt_tile_error(url, tile_problem(plan, *where, name, str(exc))) from exc
        reason = code_length_problem(chunk)
        if reason is not None:
            raise corrupt_tile_error(url, tile_problem(plan, *where, name, reason))
        values[part] = chunk
    return values


def _rates(bits: NDArray[np.float64], n_bytes: NDArray[np.int64]) -> dict[str, float | int | None]:
    known = np.isfinite(bits) & (n_bytes > 0)
    if not known.any():
        return {"bits_per_byte": None, "bits_per_byte_mean_doc": None, "n_documents": 0}
    return {
        "bits_per_byte": corpus_bits_per_byte(bits[known], n_bytes[known]),
        "bits_per_byte_mean_doc": float(np.mean(bits_per_byte(bits[known], n_bytes[known]))),
        "n_documents": int(known.sum()),
        "total_bits": float(bits[known].sum()),
        "total_bytes": int(n_bytes[known].sum()),
    }


def compression_summary(view: StoreView) -> dict[str, Any]:
    """Bits per byte of the compressor over single documents, C(x) / bytes scored.

    ``bits_per_byte``: total bits / total bytes over every distinct document of the store (rows and
    columns of a rectangular store, the one set of a square store): the figure of
    ``shared/bench/PROTOCOL.md`` (its "mean over docs" column is this byte-weighted mean; e.g.
    agnews-small gzip 6.079). ``bits_per_byte_mean_doc``: the unweighted mean of per-document rates.
    The bytes are those each code length covers (``*_scored_bytes``): all of a document unless the
    compressor truncated it; ``truncation`` counts the truncated documents
    (:class:`~nncd_ray.matrix.store.truncation.TruncationCount`); stores without scored bytes use
    the documents' full bytes (``truncation.recorded`` false). Documents whose C(x) is not computed
    yet (NaN) are left out and not counted in ``n_documents``. Also given separately for ``rows``
    and ``cols``.
    """
    sides = {}
    for side in ("row", "col"):
        try:
            full, scored = sides[side] = group_bytes(view.group, side)
        except UndecodableChunk as exc:
            raise corrupt_array_error(
                view.url, f"{side}_bytes or {side}_scored_bytes", str(exc)
            ) from exc
        if scored is not None and (scored > full).any():
            raise corrupt_array_error(
                view.url, f"{side}_scored_bytes", "says more bytes were scored than a document has"
            )
    row_bytes, col_bytes = (
        full if scored is None else np.where(scored >= 0, scored, full)
        for full, scored in (sides["row"], sides["col"])
    )
    if view.square:
        everything = _rates(view.row_bits, row_bytes)
    else:
        everything = _rates(
            np.concatenate([view.row_bits, view.col_bits]), np.concatenate([row_bytes, col_bytes])
        )
    return {
        **everything,
        "rows": _rates(view.row_bits, row_bytes),
        "cols": _rates(view.col_bits, col_bytes),
        "truncation": count_sides(sides, square=view.square).to_dict(),
    }


def _row_blocks(usable: NDArray[np.bool_], block_rows: int, tile: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` blocks of at most ``block_rows`` consecutive usable rows; a block smaller
    than a tile never crosses a tile boundary (so that it lies in one band of chunks)."""
    n = usable.shape[0]
    start = 0
    while start < n:
        if not usable[start]:
            start += 1
            continue
        limit = min(n, start + block_rows)
        if block_rows < tile:
            limit = min(limit, (start // tile + 1) * tile)
        stop = start
        while stop < limit and usable[stop]:
            stop += 1
        yield start, stop
        start = stop


def _column_moments(
    view: StoreView, blocks: list[tuple[int, int]]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and deviation of every reference's distances over the evaluated queries (first pass
    of mutual proximity; the query itself left out on a square store)."""
    moments = ColumnMoments(view.n_cols)
    for row_start, row_stop in blocks:
        moments.add(
            mask_own_cells(view.distances(row_start, row_stop), row_start if view.square else None)
        )
    return moments.mean_std()


def _block(
    view: StoreView,
    row_start: int,
    row_stop: int,
    columns: tuple[NDArray[np.float64], NDArray[np.float64]] | None,
) -> NDArray[np.float64]:
    """The distances k-NN ranks for a block of rows: NCD, or with ``columns`` (each reference's
    mean and deviation) its mutual proximity."""
    distances = view.distances(row_start, row_stop)
    if columns is None:
        return distances
    distances = mask_own_cells(distances, row_start if view.square else None)
    return mutual_proximity(distances, *row_moments(distances), *columns)


def evaluate_store(config: EvaluationConfig) -> EvaluationReport:
    """Classify the store's rows against its columns for every k; return the report.

    Storage failures (credentials, network, permissions) raise
    :class:`~nncd_ray.errors.StoreError` subclasses; a bad tile raises
    :class:`~nncd_ray.errors.CorruptTile`.
    """
    with store_errors(config.store):
        return _evaluate(config)


def _evaluate(config: EvaluationConfig) -> EvaluationReport:
    started = time.perf_counter()
    if config.hubness_reduction not in HUBNESS_REDUCTIONS:
        raise ConfigError(
            f"unknown hubness reduction {config.hubness_reduction!r}; choose one of: "
            f"{', '.join(HUBNESS_REDUCTIONS)}"
        )
    view = StoreView.open(
        config.store, variant=config.variant, storage_options=config.storage_options
    )
    group = view.group
    if "col_labels" not in group:
        raise InputError(
            f"the store {config.store} has no reference labels (col_labels): k-NN needs labelled "
            "references; compute the matrix from labelled documents"
        )
    url = config.store
    reference_labels = _plain_list(_array(group, "col_labels"), url)
    query_labels = _plain_list(_array(group, "row_labels"), url) if "row_labels" in group else None
    row_ids = [str(v) for v in _plain_list(_array(group, "row_ids"), url)]
    col_ids = [str(v) for v in _plain_list(_array(group, "col_ids"), url)]
    n_candidates = view.n_cols - (1 if view.square else 0)
    ks = check_ks(config.ks, n_candidates)

    usable = view.complete_rows()
    skipped = np.flatnonzero(~usable)
    if skipped.size:
        done = int(view.tiles_done.sum())
        if not config.allow_partial:
            raise IncompleteMatrix(
                f"store {config.store} has {view.tiles_done.size - done} of {view.tiles_done.size} "
                f"tiles not computed ({skipped.size} of {view.n_rows} rows incomplete); resume it "
                "with `nncd matrix` and the same settings, or pass --allow-partial to classify the "
                "complete rows only"
            )
        if not usable.any():
            raise IncompleteMatrix(
                f"store {config.store} has no fully computed row yet ({done} of "
                f"{view.tiles_done.size} tiles done); nothing to classify"
            )

    codec = LabelCodec.from_labels(reference_labels, query_labels or [])
    accumulator = KNNAccumulator(reference_labels, ks, codec)
    block_rows = view.block_size(config.block_rows)
    blocks = list(_row_blocks(usable, block_rows, view.tile))
    columns = _column_moments(view, blocks) if config.hubness_reduction == "mp" else None
    for row_start, row_stop in blocks:
        # no name holds a block across iterations: one block in memory at a time
        accumulator.add_block(
            _block(view, row_start, row_stop, columns),
            diagonal_offset=row_start if view.square else None,
            overwrite_input=True,  # the block is ours: no second copy
        )

    evaluated = np.flatnonzero(usable)
    predicted = accumulator.predicted_codes()
    true = [query_labels[i] for i in evaluated] if query_labels is not None else None
    results = tuple(accumulator.metrics(true)) if true is not None else ()
    attrs = view.attrs
    config_attr = attrs.get("config") or {}
    compressor = config_attr.get("compressor") if isinstance(config_attr, dict) else None
    return EvaluationReport(
        store=config.store,
        variant=view.variant,
        square=view.square,
        ks=ks,
        n_rows=view.n_rows,
        n_queries=int(evaluated.size),
        n_refs=view.n_cols,
        results=results,
        compression=compression_summary(view),
        compressor=compressor if isinstance(compressor, dict) else None,
        skipped_rows=tuple(int(i) for i in skipped),
        query_ids=tuple(row_ids[i] for i in evaluated),
        query_rows=tuple(int(i) for i in evaluated),
        true_labels=tuple(true) if true is not None else None,
        predictions={k: tuple(codec.decode(codes)) for k, codes in predicted.items()},
        hubness=tuple(accumulator.hubness()),
        hubness_reduction=config.hubness_reduction,
        reference_ids=tuple(col_ids),
        reference_labels=tuple(reference_labels),
        block_rows=block_rows,
        seconds=time.perf_counter() - started,
    )

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
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from nncd_ray.errors import ConfigError, IncompleteMatrix, InputError, StoreError, StoreNotFound
from nncd_ray.knn import (
    HUBNESS_REDUCTIONS,
    ColumnMoments,
    KNNAccumulator,
    LabelCodec,
    check_ks,
    mask_own_cells,
    mutual_proximity,
    row_moments,
)
from nncd_ray.knn_report import EvaluationReport
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
        group = zarr.open_group(url, **kwargs)
    except FileNotFoundError as exc:
        raise StoreNotFound(f"no matrix store at {url}; compute one with `nncd matrix`") from exc
    except (OSError, ValueError, KeyError) as exc:
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


def _plain_list(array: zarr.Array) -> list[Hashable]:
    values: list[Hashable] = np.asarray(array[:]).tolist()
    return values


def read_chunkwise(array: zarr.Array, rows: slice, cols: slice) -> NDArray[np.float32]:
    """``array[rows, cols]`` as float32, read one chunk at a time into one preallocated block.

    zarr would otherwise fetch and decode every chunk of the selection concurrently, holding them
    all (for a row block of a wide matrix: a whole band of tiles) on top of the result.
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
            out[r - row_start : r_next - row_start, c - col_start : c_next - col_start] = array[
                r:r_next, c:c_next
            ]
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
        return cls(
            group=group,
            url=url,
            variant=chosen,
            square=square,
            tile=tile,
            n_rows=n_rows,
            n_cols=n_cols,
            tiles_done=np.asarray(_array(group, "tiles_done")[:], dtype=bool),
            row_bits=np.asarray(_array(group, "row_bits")[:], dtype=np.float64),
            col_bits=np.asarray(_array(group, "col_bits")[:], dtype=np.float64),
        )

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs.asdict())

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
            selection = [slice(start, stop), slice(0, other)]
            return read_chunkwise(array, *(selection if axis == 0 else selection[::-1]))
        cached = self._bands.get((name, axis))
        if cached is None or cached[0] != band:
            self._bands.pop((name, axis), None)  # free the old band before reading the next
            selection = [slice(band_start, band_stop), slice(0, other)]
            data = read_chunkwise(array, *(selection if axis == 0 else selection[::-1]))
            cached = self._bands[(name, axis)] = (band, data)
        part = slice(start - band_start, stop - band_start)
        return cached[1][part, :] if axis == 0 else cached[1][:, part]

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
    """Bits per byte of the compressor over single documents, C(x) / UTF-8 bytes.

    ``bits_per_byte``: total bits / total bytes over every distinct document of the store (rows and
    columns of a rectangular store, the one set of a square store): the figure of
    ``shared/bench/PROTOCOL.md`` (its "mean over docs" column is this byte-weighted mean; e.g.
    agnews-small gzip 6.079). ``bits_per_byte_mean_doc``: the unweighted mean of per-document rates.
    Documents whose C(x) is not computed yet (NaN) are left out and not counted in ``n_documents``.
    Also given separately for ``rows`` and ``cols``.
    """
    row_bytes = np.asarray(_array(view.group, "row_bytes")[:], dtype=np.int64)
    col_bytes = np.asarray(_array(view.group, "col_bytes")[:], dtype=np.int64)
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
    """Classify the store's rows against its columns for every k; return the report."""
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
    reference_labels = _plain_list(_array(group, "col_labels"))
    query_labels = _plain_list(_array(group, "row_labels")) if "row_labels" in group else None
    row_ids = [str(v) for v in _plain_list(_array(group, "row_ids"))]
    col_ids = [str(v) for v in _plain_list(_array(group, "col_ids"))]
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

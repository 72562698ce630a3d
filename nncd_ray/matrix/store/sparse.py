"""The sparse layout of a matrix store (candidate pruning, ``nncd matrix --candidates M``).

A prefilter chooses, for every query (row), the M references (columns) that the scorer will pair
it with; the store keeps one slot per candidate instead of one cell per reference. Besides the
dense layout's document arrays (``row_bits``, ``col_bits``, ids, labels, bytes, scored bytes, all
as in :mod:`nncd_ray.matrix.store.layout`), a sparse store has:

- ``candidates`` (n_rows, M) int32, chunk = one tile: the column index of each query's j-th
  candidate, in the prefilter's order (nearest first, ties to the lower column index), so the
  first M' < M slots are the candidates an M' job would choose; -1 until written. The driver
  writes every row's candidates before any pair tile runs and then sets the group attribute
  ``candidates_written``.
- ``pair_bits`` (n_rows, M) float32, chunk = one tile: C(x y) with x = row i and y = column
  ``candidates[i, j]``; ``pair_bits_reversed`` likewise (C(y x)) for ``ncd-min``.
- ``tiles_done``: the markers of the (n_rows, M) tile grid, exactly as in a dense store.
- ``prefilter/``: a group beside the arrays with the prefilter's own data (a classical
  compressor's complete dense store in the public layout, or the sentence embeddings), from which
  the candidates were chosen (:mod:`nncd_ray.matrix.prefilter`).

Dimensions are ``row`` and ``candidate``. Group attributes add ``layout: "sparse"``,
``candidates`` (M), ``prefilter`` (its fingerprint) and ``n_refs``; the config fingerprint that
resume compares holds all three, so another M or prefilter is another config. A dense store has
no ``layout`` attribute (read as ``"dense"``).

``row_bits`` is rewritten by every tile of its row band, as in a dense store. ``col_bits`` (C(y)
of every reference, chunked by the tile edge) is written by one owner per column band: of the
tile grid's T tiles in grid order, tile number ``b mod T`` computes column band b
(:func:`column_band_owner`), so every write stays chunk-aligned, every band has one writer, and
the extra documents spread evenly over the tiles. The job runs the owners first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from numpy.typing import NDArray

from nncd_ray.errors import StoreError, StoreMismatch
from nncd_ray.matrix.store.chunks import read_cells
from nncd_ray.matrix.store.fingerprint import fingerprint_differences, software_versions
from nncd_ray.matrix.store.layout import (
    FORMAT,
    ROW_DIM,
    coordinate_names,
    create_document_arrays,
    create_tiles_done,
    empty_progress,
    new_array,
)
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.storage_errors import maps_store_errors

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus
    from nncd_ray.matrix.tiling import Tile, TilePlan

SPARSE = "sparse"
CANDIDATE_DIM = "candidate"
CANDIDATES = "candidates"
# the group beside the arrays that holds the prefilter's data
PREFILTER_GROUP = "prefilter"
# group attribute: every row's candidates are written (set before any pair tile runs)
CANDIDATES_WRITTEN = "candidates_written"
# fill value of ``candidates``: not written yet
NO_CANDIDATE = -1


def prefilter_url(url: str) -> str:
    """Where a sparse store keeps its prefilter's data: the ``prefilter`` group inside it."""
    return f"{url.rstrip('/')}/{PREFILTER_GROUP}"


def column_bands(n_refs: int, tile: int) -> int:
    """Number of column bands (chunks of ``col_bits``) of ``n_refs`` references."""
    return -(-n_refs // tile)


def column_band_owner(grid: tuple[int, int], band: int) -> tuple[int, int]:
    """The tile ``(row band, slot band)`` that computes ``col_bits`` of column band ``band``:
    tile number ``band mod T`` in grid order, for a grid of T tiles."""
    return divmod(band % (grid[0] * grid[1]), grid[1])


def owned_column_bands(
    grid: tuple[int, int], n_refs: int, tile: int, index_row: int, index_col: int
) -> list[int]:
    """The column bands that tile ``(index_row, index_col)`` computes (often none)."""
    number = index_row * grid[1] + index_col
    return list(range(number, column_bands(n_refs, tile), grid[0] * grid[1]))


def column_bands_written(mask: NDArray[np.bool_], n_refs: int, tile: int) -> NDArray[np.bool_]:
    """``(column bands,) bool``: bands whose owner tile is done (``mask``: the tile markers)."""
    owners = np.arange(column_bands(n_refs, tile)) % mask.size
    return np.asarray(mask.reshape(-1)[owners], dtype=bool)


def candidates_problem(values: NDArray[Any], n_refs: int) -> str | None:
    """``None`` when every row of ``values`` ((rows, M) ints) names M distinct columns in
    ``[0, n_refs)``; otherwise what is wrong."""
    if values.size == 0:
        return None
    if (values < 0).any():
        return "has candidates that were never written"
    if (values >= n_refs).any():
        return f"names columns beyond the {n_refs} references"
    ordered = np.sort(values, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        return "names the same reference twice for one query"
    return None


class SparseStore:
    """Creating, resuming and writing the sparse arrays of a store (see the module docstring)."""

    @staticmethod
    @maps_store_errors
    def open_or_create(
        url: str,
        *,
        plan: TilePlan,
        n_refs: int,
        variant: str,
        config: Mapping[str, Any],
        rows: Corpus,
        cols: Corpus,
        scorer: Mapping[str, Any],
        storage_options: Mapping[str, Any] | None = None,
    ) -> MatrixStore:
        """Open the sparse store at ``url`` for writing, or create it. ``config`` is the
        fingerprint without the compressor (known once the scorers start:
        :func:`adopt_compressor`); the caller has already refused a store with another one."""
        options = dict(storage_options or {})
        if MatrixStore.check_existing(url, config, storage_options=options):
            store = MatrixStore.open(url, storage_options=options, mode="r+")
            if store.plan != plan or store.n_refs != n_refs:
                raise StoreMismatch(
                    f"store {url} has {store.plan.shape[1]} candidates of {store.n_refs} "
                    f"references per query, not {plan.shape[1]} of {n_refs}"
                )
            store.repair_documents(rows, cols)
            return store
        return SparseStore._create(url, plan, variant, config, rows, cols, scorer, options)

    @staticmethod
    def _create(
        url: str,
        plan: TilePlan,
        variant: str,
        config: Mapping[str, Any],
        rows: Corpus,
        cols: Corpus,
        scorer: Mapping[str, Any],
        options: dict[str, Any],
    ) -> MatrixStore:
        store = MatrixStore.zarr_store(url, options, read_only=False)
        group = zarr.open_group(store=store, mode="a", use_consolidated=False)
        dims = (ROW_DIM, CANDIDATE_DIM)
        chunks = (plan.tile, plan.tile)
        rows_coordinates = coordinate_names("row", rows)
        for name in ("pair_bits", *(("pair_bits_reversed",) if variant == "ncd-min" else ())):
            new_array(
                group,
                name,
                shape=plan.shape,
                chunks=chunks,
                dtype="float32",
                dims=dims,
                fill_value=np.nan,
                attributes={"units": "bits", "coordinates": rows_coordinates},
            )
        new_array(
            group,
            CANDIDATES,
            shape=plan.shape,
            chunks=chunks,
            dtype="int32",
            dims=dims,
            fill_value=NO_CANDIDATE,
            attributes={
                "meaning": "column index of the candidate",
                "coordinates": rows_coordinates,
            },
        )
        create_document_arrays(group, "row", rows, plan.tile)
        create_document_arrays(group, "col", cols, plan.tile)
        create_tiles_done(group, plan)
        group.attrs.update(
            {
                "variant": variant,
                "tile": plan.tile,
                "square": False,
                "layout": SPARSE,
                "candidates": plan.n_cols,
                "n_refs": len(cols),
                "prefilter": json.loads(json.dumps(dict(config.get("prefilter") or {}))),
                CANDIDATES_WRITTEN: False,
                "config": json.loads(json.dumps(dict(config))),
                "scorer": json.loads(json.dumps(dict(scorer))),
                "progress": empty_progress(plan),
                "failed_tiles": {},
                "software": software_versions(),
                "created_at": time.time(),
            }
        )
        group.attrs["format"] = FORMAT  # last: a store whose creation was interrupted has none
        return MatrixStore(group, url, options)

    @staticmethod
    @maps_store_errors
    def adopt_compressor(store: MatrixStore, compressor: Mapping[str, Any]) -> None:
        """Record the scorers' fingerprint in a store created before they started, or refuse
        (:class:`StoreMismatch`) one that was computed with another compressor."""
        wanted = json.loads(json.dumps(dict(compressor)))
        stored = store.config.get("compressor")
        if stored is None:
            config = {**store.config, "compressor": wanted}
            store.update_attrs({"config": config})
            store.config = config
            return
        differences = fingerprint_differences(store.config, {"compressor": wanted})
        if differences:
            raise StoreMismatch(
                f"store {store.url} was computed with " + "; ".join(differences) + ". Resume "
                "with the same settings, choose another --store, or pass --overwrite to discard it"
            )

    @staticmethod
    def candidates_written(store: MatrixStore) -> bool:
        return bool(store.attrs.get(CANDIDATES_WRITTEN))

    @staticmethod
    @maps_store_errors
    def write_candidates(store: MatrixStore, row_start: int, values: NDArray[Any]) -> None:
        """Write the candidates of rows ``[row_start, row_start + len(values))`` (whole row
        bands, so the write is chunk-aligned); ``values`` (rows, M) column indices."""
        stop = row_start + int(values.shape[0])
        store.array(CANDIDATES)[row_start:stop, :] = np.asarray(values, dtype=np.int32)

    @staticmethod
    @maps_store_errors
    def mark_candidates_written(store: MatrixStore, written: bool = True) -> None:
        store.update_attrs({CANDIDATES_WRITTEN: written})

    @staticmethod
    def read_candidates(store: MatrixStore, rows: slice, slots: slice) -> NDArray[np.int64]:
        """``candidates[rows, slots]`` as int64; a chunk that fails to decode raises
        :class:`~nncd_ray.matrix.store.chunks.UndecodableChunk`."""
        return np.asarray(read_cells(store.array(CANDIDATES), (rows, slots)), dtype=np.int64)

    @staticmethod
    @maps_store_errors
    def write_tile(
        store: MatrixStore,
        tile: Tile,
        *,
        row_bits: NDArray[np.floating[Any]],
        pair_bits: NDArray[np.floating[Any]],
        pair_bits_reversed: NDArray[np.floating[Any]] | None,
        row_scored_bytes: NDArray[np.integer[Any]],
        column_bands: Mapping[int, tuple[NDArray[np.floating[Any]], NDArray[np.integer[Any]]]],
    ) -> None:
        """Write one sparse tile's data (not its marker): ``pair_bits`` (and reversed) (tile
        rows, tile slots) in bits, ``row_bits`` / ``row_scored_bytes`` (tile rows,), and for
        each column band it owns, ``band -> (C(y) bits, scored bytes)`` of the band's references."""
        rows = slice(tile.row_start, tile.row_stop)
        slots = slice(tile.col_start, tile.col_stop)
        if np.shape(pair_bits) != tile.shape or len(row_bits) != tile.shape[0]:
            raise StoreError(
                f"tile {tile.key}: scores of shape {np.shape(pair_bits)}, not {tile.shape}"
            )
        if store.has_reversed and pair_bits_reversed is None:
            raise StoreError(f"tile {tile.key}: this ncd-min store needs C(yx) as well")
        store.array("pair_bits")[rows, slots] = np.asarray(pair_bits, dtype=np.float32)
        if store.has_reversed and pair_bits_reversed is not None:
            store.array("pair_bits_reversed")[rows, slots] = np.asarray(
                pair_bits_reversed, dtype=np.float32
            )
        store.array("row_bits")[rows] = np.asarray(row_bits, dtype=np.float32)
        store.array("row_scored_bytes")[rows] = np.asarray(row_scored_bytes, dtype=np.int64)
        for band, (bits, scored) in sorted(column_bands.items()):
            part = slice(band * store.tile, band * store.tile + len(bits))
            store.array("col_bits")[part] = np.asarray(bits, dtype=np.float32)
            store.array("col_scored_bytes")[part] = np.asarray(scored, dtype=np.int64)


__all__ = [
    "CANDIDATES",
    "CANDIDATES_WRITTEN",
    "CANDIDATE_DIM",
    "PREFILTER_GROUP",
    "SPARSE",
    "SparseStore",
    "candidates_problem",
    "column_band_owner",
    "column_bands",
    "column_bands_written",
    "owned_column_bands",
    "prefilter_url",
]

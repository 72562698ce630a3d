"""The public layout of a matrix store (DESIGN.md §5): its arrays, their chunks, codecs and named
dimensions, and how they are created from the documents.

Arrays (read them with plain zarr):

- ``pair_bits`` (n_rows, n_cols) float32, chunk = one tile: C(xy) in bits, x = row, y = column; NaN
  where not computed. ``pair_bits_reversed`` (same shape) only for rectangular ``ncd-min`` jobs:
  C(yx), y = column document first.
- ``row_bits`` / ``col_bits`` (n,) float32 C(x) in bits, chunked by the tile size, so a tile writes
  whole chunks; ``row_bytes`` / ``col_bytes`` (n,) int64 UTF-8 bytes per document.
- ``row_scored_bytes`` / ``col_scored_bytes`` (n,) int64, chunked like ``row_bits`` and written
  with it: the UTF-8 bytes of each document that its code length covers (fewer than ``*_bytes``
  when the compressor truncated the document; -1 until a tile has scored it). Bits per byte divides
  by these. Stores written before they existed lack them: readers then use ``*_bytes``.
- ``row_ids`` / ``col_ids`` (n,) strings; ``row_labels`` / ``col_labels`` (n,) int64 or strings,
  absent when the input has no labels. Square jobs write ``col_*`` equal to ``row_*``.
- ``tiles_done`` (tiles along rows, tiles along columns) bool, chunk (1, 1): one object per tile,
  written only after the tile's data.

Every write is chunk-aligned: aligned writes from many processes lose nothing. Completion is
never inferred from chunk presence (zarr does not store all-NaN chunks); only ``tiles_done`` says a
tile is complete. Every chunk carries a crc32c checksum after its zstd compression, and every array
has ``dimension_names`` (``row``, ``col``, ``tile_row``, ``tile_col``) with the ids and labels named
as CF ``coordinates``, so ``xarray.open_zarr(url)`` gives the labelled matrix. Group attributes:
``format``, ``variant``, ``tile``, ``square``, ``config`` (the
fingerprint that resume compares), ``progress``, ``failed_tiles``, ``software``, ``scorer``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.codecs import Crc32cCodec, ZstdCodec

from nncd_ray.matrix.tiling import TilePlan

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus, Label

FORMAT = "nncd-matrix/1"
# the ``layout`` attribute of a store that holds every pair (stores without one are dense); sparse
# stores are described in nncd_ray.matrix.store.sparse
DENSE = "dense"
# ids and labels are written once, up front, by one process: big chunks, few objects
ID_CHUNK = 1 << 16
# dimension names (xarray needs them): one per axis of the matrix and of the tile grid
ROW_DIM, COL_DIM = "row", "col"
TILE_DIMS = ("tile_row", "tile_col")
# fill value of the scored-bytes arrays: no tile has scored the document yet
UNSCORED = -1
# the arrays that hold one value per (row, column) cell, chunk = one tile
PAIR_ARRAYS = ("pair_bits", "pair_bits_reversed")
# one value per document, chunk = one tile band, rewritten by every tile of the band
PER_DOCUMENT_ARRAYS = ("row_bits", "col_bits", "row_scored_bytes", "col_scored_bytes")
# arrays written once when the store is created, from the documents
DOCUMENT_ARRAYS = ("row_ids", "col_ids", "row_labels", "col_labels", "row_bytes", "col_bytes")


def chunk_compressors() -> tuple[ZstdCodec, Crc32cCodec]:
    """zstd (zarr's default compressor), then a crc32c checksum of the compressed bytes: a changed
    or truncated chunk fails to decode instead of reading back as wrong numbers. crc32c rather than
    zstd's own checksum because it is the zarr v3 integrity codec, covers every stored byte of
    every array whatever its compressor, and its error names the cause; measured on a 2048 x 2048
    float32 array in 256-wide chunks, writing and reading cost the same with it as without (within
    the noise of a run, ~0.07 s and ~0.04 s)."""
    return ZstdCodec(level=0), Crc32cCodec()


def new_array(
    group: zarr.Group,
    name: str,
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    dims: tuple[str, ...],
    fill_value: Any = None,
    attributes: Mapping[str, Any] | None = None,
) -> zarr.Array:
    """An array of the store: crc32c-checked chunks and named dimensions (for xarray)."""
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=fill_value,
        compressors=chunk_compressors(),
        dimension_names=dims,
        attributes=dict(attributes or {}),
    )


def coordinate_names(side: str, corpus: Corpus) -> str:
    """CF ``coordinates`` of one side: its ids and, when there are labels, its labels."""
    return f"{side}_ids" + (f" {side}_labels" if corpus.labels is not None else "")


def document_bytes(corpus: Corpus) -> NDArray[np.int64]:
    """(n,) int64 UTF-8 bytes of each document."""
    return np.array([len(t.encode("utf-8")) for t in corpus.texts], dtype=np.int64)


def create_document_arrays(group: zarr.Group, side: str, corpus: Corpus, tile: int) -> None:
    """``<side>_bits``, ``_scored_bytes``, ``_bytes``, ``_ids`` and ``_labels`` (with labels)."""
    n = len(corpus)
    dims = (ROW_DIM if side == "row" else COL_DIM,)
    coordinates = {"coordinates": coordinate_names(side, corpus)}
    # written tile by tile, so chunked like the tiles
    for name, dtype, fill, units in (
        ("bits", "float32", np.nan, "bits"),
        ("scored_bytes", "int64", UNSCORED, "bytes"),
    ):
        new_array(
            group,
            f"{side}_{name}",
            shape=(n,),
            chunks=(tile,),
            dtype=dtype,
            dims=dims,
            fill_value=fill,
            attributes={"units": units, **coordinates},
        )
    write_documents(group, side, corpus, tile, created=True)


def create_tiles_done(group: zarr.Group, plan: TilePlan) -> None:
    """``tiles_done``: one bool per tile of ``plan``, each its own chunk (a worker marks it)."""
    new_array(
        group,
        "tiles_done",
        shape=plan.grid,
        chunks=(1, 1),
        dtype="bool",
        dims=TILE_DIMS,
        fill_value=False,
    )


def write_documents(
    group: zarr.Group, side: str, corpus: Corpus, tile: int, *, created: bool
) -> None:
    """(Re)write ``<side>_bytes``, ``_ids`` and ``_labels`` from the documents: at creation, or
    to repair an array that no longer decodes (``created=False`` replaces the array)."""
    n = len(corpus)
    dims = (ROW_DIM if side == "row" else COL_DIM,)
    values: dict[str, tuple[NDArray[Any], tuple[int, ...], Any, dict[str, Any]]] = {
        f"{side}_bytes": (
            document_bytes(corpus),
            (tile,),
            "int64",
            {"units": "bytes", "coordinates": coordinate_names(side, corpus)},
        ),
        f"{side}_ids": (np.array(corpus.ids, dtype=str), (min(n, ID_CHUNK),), str, {}),
    }
    if corpus.labels is not None:
        labels = label_array(corpus.labels)
        dtype = labels.dtype if labels.dtype == np.int64 else str
        values[f"{side}_labels"] = (labels, (min(n, ID_CHUNK),), dtype, {})
    for name, (data, chunks, dtype, attributes) in values.items():
        if not created and name in group:
            del group[name]
        new_array(
            group, name, shape=(n,), chunks=chunks, dtype=dtype, dims=dims, attributes=attributes
        )[:] = data


def label_array(labels: tuple[Label, ...]) -> NDArray[Any]:
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in labels):
        return np.array(labels, dtype=np.int64)
    return np.array([str(v) for v in labels], dtype=str)


def empty_progress(plan: TilePlan) -> dict[str, Any]:
    """The ``progress`` attribute of a store where nothing is computed yet."""
    return {
        "tiles_total": plan.n_tiles,
        "tiles_done": 0,
        "tiles_failed": 0,
        "pairs_total": plan.n_pairs,
        "pairs_done": 0,
        "compute_seconds": 0.0,
        "pairs_per_second": 0.0,
        "nodes": {},
        "runs": 0,
        "updated_at": time.time(),
    }

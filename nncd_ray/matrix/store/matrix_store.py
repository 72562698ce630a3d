"""The matrix store: one Zarr v3 group per matrix job, in the public layout of DESIGN.md §5.

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

import importlib.metadata
import json
import platform
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.storage import FsspecStore, LocalStore

from nncd_ray import __version__
from nncd_ray.errors import IncompleteMatrix, StoreError, StoreMismatch, StoreNotFound
from nncd_ray.matrix.store.storage_errors import maps_store_errors
from nncd_ray.matrix.tiling import Tile, TilePlan

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus, Label

FORMAT = "nncd-matrix/1"
# ids and labels are written once, up front, by one process: big chunks, few objects
ID_CHUNK = 1 << 16
# dimension names (xarray needs them): one per axis of the matrix and of the tile grid
ROW_DIM, COL_DIM = "row", "col"
TILE_DIMS = ("tile_row", "tile_col")
# fill value of the scored-bytes arrays: no tile has scored the document yet
UNSCORED = -1


def chunk_compressors() -> tuple[ZstdCodec, Crc32cCodec]:
    """zstd (zarr's default compressor), then a crc32c checksum of the compressed bytes: a changed
    or truncated chunk fails to decode instead of reading back as wrong numbers. crc32c rather than
    zstd's own checksum because it is the zarr v3 integrity codec, covers every stored byte of
    every array whatever its compressor, and its error names the cause; measured on a 2048 x 2048
    float32 array in 256-wide chunks, writing and reading cost the same with it as without (within
    the noise of a run, ~0.07 s and ~0.04 s)."""
    return ZstdCodec(level=0), Crc32cCodec()


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def software_versions() -> dict[str, str]:
    """Versions of what computed the numbers, read without importing heavy packages."""
    versions = {"nncd_ray": __version__, "python": platform.python_version()}
    for package in ("zarr", "numpy", "ray", "torch", "transformers", "tokenizers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def corpus_fingerprint(corpus: Corpus) -> dict[str, Any]:
    """What the store records about one document set (hash covers ids, texts, labels and order)."""
    return {"n": len(corpus), "content_hash": corpus.content_hash()}


def _describe(key: str, value: Any, other: Any) -> str:
    """One side of a difference; for compressors, the name plus its settings (only the settings
    that differ when both sides are the same compressor)."""
    if key == "compressor" and isinstance(value, Mapping):
        other = other if isinstance(other, Mapping) else {}
        name = value.get("compressor", value.get("name", "?"))
        same = name == other.get("compressor", other.get("name"))
        rest = " ".join(
            f"{k} {v}"
            for k, v in sorted(value.items())
            if k not in ("compressor", "name") and not (same and other.get(k) == v)
        )
        return f"{name} {rest}".strip()
    if key in ("rows", "cols") and isinstance(value, Mapping):
        digest = str(value.get("content_hash", "?"))[:12]
        return f"{value.get('n', '?')} documents (sha256 {digest}…)"
    return json.dumps(value, sort_keys=True)


def fingerprint_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Human lines ``"compressor gzip level 9, not bz2 level 6"`` for every top-level key of
    ``wanted`` whose value differs from ``stored``."""
    lines = []
    for key in sorted(wanted):
        have = json.loads(json.dumps(stored.get(key), sort_keys=True))
        want = json.loads(json.dumps(wanted[key], sort_keys=True))
        if have != want:
            lines.append(f"{key} {_describe(key, have, want)}, not {_describe(key, want, have)}")
    return lines


class MatrixStore:
    """A handle on one matrix store. Build with :meth:`create_or_resume` or :meth:`open`."""

    def __init__(self, group: zarr.Group, url: str, storage_options: Mapping[str, Any]) -> None:
        self.group = group
        self.url = url
        self.storage_options = dict(storage_options)
        self.fs, self.root = fsspec.core.url_to_fs(url, **self.storage_options)
        self._arrays: dict[str, zarr.Array] = {}
        attrs: dict[str, Any] = dict(group.attrs.asdict())
        self.variant: str = str(attrs["variant"])
        self.tile: int = int(attrs["tile"])
        self.square: bool = bool(attrs["square"])
        self.config: dict[str, Any] = dict(attrs["config"])
        shape = self.array("pair_bits").shape
        self.plan = TilePlan(n_rows=int(shape[0]), n_cols=int(shape[1]), tile=self.tile)
        self.has_reversed = "pair_bits_reversed" in group
        # stores written before scored bytes were recorded lack these arrays
        self.has_scored_bytes = "row_scored_bytes" in group

    # -- opening -----------------------------------------------------------------------------

    @staticmethod
    def _zarr_store(
        url: str, storage_options: Mapping[str, Any], *, read_only: bool
    ) -> LocalStore | FsspecStore:
        if is_remote(url):
            return FsspecStore.from_url(
                url, storage_options=dict(storage_options), read_only=read_only
            )
        path = url.removeprefix("file://")
        return LocalStore(path, read_only=read_only)

    @staticmethod
    def _state(url: str, storage_options: Mapping[str, Any]) -> str:
        """``"missing"``, ``"empty"`` (an empty folder), ``"zarr"`` or ``"other"``."""
        fs, root = fsspec.core.url_to_fs(url, **dict(storage_options))
        fs.invalidate_cache(root)
        if fs.exists(f"{root}/zarr.json"):
            return "zarr"
        if not fs.exists(root):
            return "missing"
        if fs.isfile(root) or fs.ls(root, detail=False):
            return "other"
        return "empty"

    @classmethod
    @maps_store_errors
    def open(
        cls, url: str, *, storage_options: Mapping[str, Any] | None = None, mode: str = "r"
    ) -> MatrixStore:
        """Open an existing store (``mode`` ``"r"`` to read, ``"r+"`` to write tiles)."""
        options = dict(storage_options or {})
        state = cls._state(url, options)
        if state in ("missing", "empty"):
            raise StoreNotFound(
                f"no matrix store at {url}{cls._missing_bucket_note(url, options)}; compute one "
                "with `nncd matrix`"
            )
        if state == "other":
            raise StoreError(f"{url} is not a matrix store (no zarr.json in it)")
        store = cls._zarr_store(url, options, read_only=mode == "r")
        group = zarr.open_group(store=store, mode=mode, use_consolidated=False)  # type: ignore[arg-type]
        if group.attrs.get("format") != FORMAT:
            raise StoreError(
                f"{url} is a Zarr group but not a complete nncd matrix store (format "
                f"{group.attrs.get('format')!r}, expected {FORMAT!r}); recompute it with "
                "--overwrite"
            )
        return cls(group, url, options)

    @staticmethod
    def _missing_bucket_note(url: str, storage_options: Mapping[str, Any]) -> str:
        """`` (its bucket … does not exist)`` for a remote URL whose bucket is missing, else
        ``""``."""
        if not is_remote(url):
            return ""
        fs, root = fsspec.core.url_to_fs(url, **dict(storage_options))
        bucket = root.split("/", 1)[0]
        try:
            return "" if fs.exists(bucket) else f" (its bucket {bucket!r} does not exist)"
        except OSError:
            return ""

    @classmethod
    @maps_store_errors
    def check_existing(
        cls,
        url: str,
        expected: Mapping[str, Any],
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> bool:
        """If a store exists at ``url``, refuse (StoreMismatch) unless its config agrees with
        ``expected`` on every key ``expected`` has; return whether a store exists.

        Lets the engine refuse a wrong resume before it spends minutes loading models.
        """
        options = dict(storage_options or {})
        state = cls._state(url, options)
        if state in ("missing", "empty"):
            return False
        if state == "other":
            raise StoreError(
                f"{url} exists and is not a matrix store; choose another --store "
                "(it is never deleted, even with --overwrite)"
            )
        existing = cls.open(url, storage_options=options)
        differences = fingerprint_differences(existing.config, expected)
        if differences:
            raise StoreMismatch(
                f"store {url} was computed with "
                + "; ".join(differences)
                + ". Resume with the same settings, choose another --store, or pass --overwrite "
                "to discard it"
            )
        return True

    @classmethod
    @maps_store_errors
    def delete(cls, url: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
        """Delete a matrix store (only something that is a Zarr group, or an empty folder)."""
        options = dict(storage_options or {})
        state = cls._state(url, options)
        if state == "missing":
            return
        if state == "other":
            raise StoreError(f"{url} exists and is not a matrix store; refusing to delete it")
        fs, root = fsspec.core.url_to_fs(url, **options)
        fs.rm(root, recursive=True)
        fs.invalidate_cache(root)

    @classmethod
    @maps_store_errors
    def create_or_resume(
        cls,
        url: str,
        *,
        plan: TilePlan,
        variant: str,
        config: Mapping[str, Any],
        rows: Corpus,
        cols: Corpus | None,
        scorer: Mapping[str, Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> MatrixStore:
        """Open the store for writing if it was computed with exactly ``config``, else create it.

        An existing store with another config raises :class:`StoreMismatch` and is left
        unchanged, unless ``overwrite`` (then it is deleted and recreated). ``cols`` is ``None``
        for square jobs.
        """
        options = dict(storage_options or {})
        if overwrite:
            cls.delete(url, storage_options=options)
        elif cls.check_existing(url, config, storage_options=options):
            store = cls.open(url, storage_options=options, mode="r+")
            if store.plan != plan:
                raise StoreMismatch(f"store {url} has shape {store.plan.shape}, not {plan.shape}")
            store.repair_documents(rows, cols)
            return store
        return cls._create(url, plan, variant, config, rows, cols, scorer, options)

    @classmethod
    def _create(
        cls,
        url: str,
        plan: TilePlan,
        variant: str,
        config: Mapping[str, Any],
        rows: Corpus,
        cols: Corpus | None,
        scorer: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> MatrixStore:
        square = cols is None
        store = cls._zarr_store(url, options, read_only=False)
        group = zarr.open_group(store=store, mode="a", use_consolidated=False)
        sides = {"row": rows, "col": rows if cols is None else cols}
        coordinates = {side: _coordinates(side, corpus) for side, corpus in sides.items()}
        pair_names = ("pair_bits",) + (
            ("pair_bits_reversed",) if variant == "ncd-min" and not square else ()
        )
        for name in pair_names:
            _new_array(
                group,
                name,
                shape=plan.shape,
                chunks=(plan.tile, plan.tile),
                dtype="float32",
                dims=(ROW_DIM, COL_DIM),
                fill_value=np.nan,
                attributes={"units": "bits", "coordinates": " ".join(coordinates.values())},
            )
        for side, corpus in sides.items():
            _create_document_arrays(group, side, corpus, plan.tile)
        _new_array(
            group,
            "tiles_done",
            shape=plan.grid,
            chunks=(1, 1),
            dtype="bool",
            dims=TILE_DIMS,
            fill_value=False,
        )
        # the format attribute goes last: a store whose creation was interrupted has none
        group.attrs.update(
            {
                "variant": variant,
                "tile": plan.tile,
                "square": square,
                "config": json.loads(json.dumps(dict(config))),
                "scorer": json.loads(json.dumps(dict(scorer or {}))),
                "progress": empty_progress(plan),
                "failed_tiles": {},
                "software": software_versions(),
                "created_at": time.time(),
            }
        )
        group.attrs["format"] = FORMAT
        return cls(group, url, options)

    # -- writing (chunk-aligned only) -------------------------------------------------------------

    def array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            node = self.group[name]
            if not isinstance(node, zarr.Array):
                raise StoreError(f"{self.url}/{name} is not an array")
            self._arrays[name] = node
        return self._arrays[name]

    @maps_store_errors
    def write_tile(
        self,
        tile: Tile,
        *,
        row_bits: NDArray[np.floating[Any]],
        col_bits: NDArray[np.floating[Any]],
        pair_bits: NDArray[np.floating[Any]],
        pair_bits_reversed: NDArray[np.floating[Any]] | None = None,
        row_scored_bytes: NDArray[np.integer[Any]] | None = None,
        col_scored_bytes: NDArray[np.integer[Any]] | None = None,
    ) -> None:
        """Write one tile's data (not its marker). Shapes: ``row_bits`` (tile rows,), ``col_bits``
        (tile cols,), ``pair_bits`` and ``pair_bits_reversed`` (tile rows, tile cols), in bits;
        ``row_scored_bytes`` / ``col_scored_bytes`` like ``row_bits`` / ``col_bits``, UTF-8 bytes
        each code length covers (written when given and the store has the arrays)."""
        rows = slice(tile.row_start, tile.row_stop)
        cols = slice(tile.col_start, tile.col_stop)
        expected = tile.shape
        if np.shape(pair_bits) != expected or len(row_bits) != expected[0]:
            raise StoreError(
                f"tile {tile.key}: scores of shape {np.shape(pair_bits)}, not {expected}"
            )
        if self.has_reversed and pair_bits_reversed is None:
            raise StoreError(f"tile {tile.key}: this ncd-min store needs C(yx) as well")
        self.array("pair_bits")[rows, cols] = np.asarray(pair_bits, dtype=np.float32)
        if self.has_reversed and pair_bits_reversed is not None:
            self.array("pair_bits_reversed")[rows, cols] = np.asarray(
                pair_bits_reversed, dtype=np.float32
            )
        self.array("row_bits")[rows] = np.asarray(row_bits, dtype=np.float32)
        self.array("col_bits")[cols] = np.asarray(col_bits, dtype=np.float32)
        if self.has_scored_bytes:
            for side, part, scored in (
                ("row", rows, row_scored_bytes),
                ("col", cols, col_scored_bytes),
            ):
                if scored is not None:
                    self.array(f"{side}_scored_bytes")[part] = np.asarray(scored, dtype=np.int64)

    @maps_store_errors
    def mark_done(self, tile: Tile) -> None:
        """Set the tile's completion marker; call only after :meth:`write_tile` returned."""
        self.array("tiles_done")[tile.index_row, tile.index_col] = True

    @maps_store_errors
    def unmark(self, index_row: int, index_col: int) -> None:
        """Clear a tile's completion marker (a tile that failed verification, before it is
        recomputed). Writing the fill value deletes the marker's object."""
        self.array("tiles_done")[index_row, index_col] = False

    @maps_store_errors
    def repair_documents(self, rows: Corpus, cols: Corpus | None) -> list[str]:
        """Rewrite the document arrays (``*_bytes``, ``*_ids``, ``*_labels``) that no longer decode
        or differ from the documents (the config fingerprint already matched, so the documents are
        the store's own); returns the names of the arrays rewritten."""
        from nncd_ray.matrix.store.integrity import UndecodableChunk, read_cells

        repaired = []
        for side, corpus in (("row", rows), ("col", rows if cols is None else cols)):
            expected = {
                f"{side}_bytes": _document_bytes(corpus),
                f"{side}_ids": np.array(corpus.ids, dtype=str),
            }
            if corpus.labels is not None:
                expected[f"{side}_labels"] = _label_array(corpus.labels)
            bad = []
            for name, values in expected.items():
                try:
                    stored = read_cells(self.array(name), (slice(None),))
                except (UndecodableChunk, KeyError):
                    bad.append(name)
                    continue
                if stored.shape != values.shape or not (stored == values).all():
                    bad.append(name)
            if bad:
                _write_documents(self.group, side, corpus, self.tile, created=False)
                self._arrays.clear()
                repaired += bad
        return repaired

    @maps_store_errors
    def update_attrs(self, values: Mapping[str, Any]) -> None:
        """Replace some group attributes (``progress``, ``failed_tiles``); driver only."""
        self.group.attrs.update(json.loads(json.dumps(dict(values))))

    # -- reading ----------------------------------------------------------------------------

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs.asdict())

    @property
    def progress(self) -> dict[str, Any]:
        return dict(self.attrs.get("progress") or {})

    @property
    def failed_tiles(self) -> dict[str, str]:
        return dict(self.attrs.get("failed_tiles") or {})

    @maps_store_errors
    def done_mask(self) -> NDArray[np.bool_]:
        """``(tiles along rows, tiles along columns)`` bool: which tiles are complete.

        Lists the marker objects instead of reading every (1, 1) chunk: one listing instead of one
        request per tile. Only ``True`` is ever written and zarr stores no fill-value chunks, so a
        marker object exists exactly when its tile is done.
        """
        mask = np.zeros(self.plan.grid, dtype=bool)
        prefix = f"{self.root.rstrip('/')}/tiles_done/c"
        self.fs.invalidate_cache(prefix)
        try:
            found = self.fs.find(prefix)
        except FileNotFoundError:
            return mask
        for path in found:
            parts = path[len(prefix) :].strip("/").split("/")
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                mask[int(parts[0]), int(parts[1])] = True
        return mask

    def tiles_done(self) -> int:
        return int(self.done_mask().sum())

    def require_complete(self) -> None:
        """Raise :class:`IncompleteMatrix` unless every tile is done."""
        mask = self.done_mask()
        missing = int(mask.size - mask.sum())
        if missing:
            raise IncompleteMatrix(
                f"store {self.url} has {missing} of {mask.size} tiles not computed; resume it with "
                "`nncd matrix` and the same settings"
            )

    def row_bits(self) -> NDArray[np.float32]:
        """(n_rows,) float32 C(x) of the row documents, bits."""
        return np.asarray(self.array("row_bits")[:], dtype=np.float32)

    def col_bits(self) -> NDArray[np.float32]:
        """(n_cols,) float32 C(y) of the column documents, bits."""
        return np.asarray(self.array("col_bits")[:], dtype=np.float32)

    def ids(self, side: str) -> list[str]:
        """Document ids of ``side`` ``"row"`` or ``"col"``."""
        return [str(v) for v in np.asarray(self.array(f"{side}_ids")[:])]

    def labels(self, side: str) -> NDArray[Any] | None:
        """Labels of ``side`` (int64 or str array), or ``None`` when the input had none."""
        name = f"{side}_labels"
        return np.asarray(self.array(name)[:]) if name in self.group else None

    def doc_bytes(self, side: str) -> NDArray[np.int64]:
        """(n,) int64 UTF-8 bytes of each document of ``side``."""
        return np.asarray(self.array(f"{side}_bytes")[:], dtype=np.int64)

    def scored_bytes(self, side: str) -> NDArray[np.int64] | None:
        """(n,) int64 UTF-8 bytes of each document of ``side`` that its code length covers (-1
        where no tile has scored it yet), or ``None`` for a store written before they were
        recorded."""
        if not self.has_scored_bytes:
            return None
        return np.asarray(self.array(f"{side}_scored_bytes")[:], dtype=np.int64)

    def read_pair_bits(
        self, row_start: int, row_stop: int, *, reversed_order: bool = False
    ) -> NDArray[np.float32]:
        """``(row_stop - row_start, n_cols)`` float32 C(xy) bits of a block of rows (C(yx) with
        ``reversed_order``, rectangular ncd-min stores only)."""
        name = "pair_bits_reversed" if reversed_order else "pair_bits"
        return np.asarray(self.array(name)[row_start:row_stop, :], dtype=np.float32)

    def iter_row_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, int]]:
        """``(row_start, row_stop)`` of blocks of whole tile rows, for streaming reads."""
        step = max(self.tile, (block_rows or self.tile) // self.tile * self.tile)
        for start in range(0, self.plan.n_rows, step):
            yield start, min(start + step, self.plan.n_rows)


def _new_array(
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


def _coordinates(side: str, corpus: Corpus) -> str:
    """CF ``coordinates`` of one side: its ids and, when there are labels, its labels."""
    return f"{side}_ids" + (f" {side}_labels" if corpus.labels is not None else "")


def _document_bytes(corpus: Corpus) -> NDArray[np.int64]:
    """(n,) int64 UTF-8 bytes of each document."""
    return np.array([len(t.encode("utf-8")) for t in corpus.texts], dtype=np.int64)


def _create_document_arrays(group: zarr.Group, side: str, corpus: Corpus, tile: int) -> None:
    """``<side>_bits``, ``_scored_bytes``, ``_bytes``, ``_ids`` and ``_labels`` (with labels)."""
    n = len(corpus)
    dims = (ROW_DIM if side == "row" else COL_DIM,)
    coordinates = {"coordinates": _coordinates(side, corpus)}
    # written tile by tile, so chunked like the tiles
    for name, dtype, fill, units in (
        ("bits", "float32", np.nan, "bits"),
        ("scored_bytes", "int64", UNSCORED, "bytes"),
    ):
        _new_array(
            group,
            f"{side}_{name}",
            shape=(n,),
            chunks=(tile,),
            dtype=dtype,
            dims=dims,
            fill_value=fill,
            attributes={"units": units, **coordinates},
        )
    _write_documents(group, side, corpus, tile, created=True)


def _write_documents(
    group: zarr.Group, side: str, corpus: Corpus, tile: int, *, created: bool
) -> None:
    """(Re)write ``<side>_bytes``, ``_ids`` and ``_labels`` from the documents: at creation, or
    to repair an array that no longer decodes (``created=False`` replaces the array)."""
    n = len(corpus)
    dims = (ROW_DIM if side == "row" else COL_DIM,)
    values: dict[str, tuple[NDArray[Any], tuple[int, ...], Any, dict[str, Any]]] = {
        f"{side}_bytes": (
            _document_bytes(corpus),
            (tile,),
            "int64",
            {"units": "bytes", "coordinates": _coordinates(side, corpus)},
        ),
        f"{side}_ids": (np.array(corpus.ids, dtype=str), (min(n, ID_CHUNK),), str, {}),
    }
    if corpus.labels is not None:
        labels = _label_array(corpus.labels)
        dtype = labels.dtype if labels.dtype == np.int64 else str
        values[f"{side}_labels"] = (labels, (min(n, ID_CHUNK),), dtype, {})
    for name, (data, chunks, dtype, attributes) in values.items():
        if not created and name in group:
            del group[name]
        _new_array(
            group, name, shape=(n,), chunks=chunks, dtype=dtype, dims=dims, attributes=attributes
        )[:] = data


def _label_array(labels: tuple[Label, ...]) -> NDArray[Any]:
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

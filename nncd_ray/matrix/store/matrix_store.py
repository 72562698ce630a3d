"""The matrix store handle: opening, creating or resuming a store, writing tiles (chunk-aligned
only) and their completion markers, and the group's attributes.

The arrays and attributes are those of the public layout (:mod:`nncd_ray.matrix.store.layout`,
DESIGN.md §5). Every write is chunk-aligned: aligned writes from many processes lose nothing.
Completion is never inferred from chunk presence (zarr does not store all-NaN chunks); only
``tiles_done`` says a tile is complete, and its marker is set only after the tile's data. Reading
the matrix back with every value checked is :class:`~nncd_ray.matrix.store.reader.StoreReader`'s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.storage import FsspecStore, LocalStore

from nncd_ray.errors import StoreError, StoreMismatch, StoreNotFound
from nncd_ray.matrix.store.chunks import UndecodableChunk, read_cells
from nncd_ray.matrix.store.fingerprint import fingerprint_differences, software_versions
from nncd_ray.matrix.store.layout import (
    COL_DIM,
    DENSE,
    FORMAT,
    ROW_DIM,
    coordinate_names,
    create_document_arrays,
    create_tiles_done,
    document_bytes,
    empty_progress,
    label_array,
    new_array,
    write_documents,
)
from nncd_ray.matrix.store.storage_errors import maps_store_errors
from nncd_ray.matrix.tiling import Tile, TilePlan

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _describe_layout(config: Mapping[str, Any]) -> str:
    """``dense (every pair)`` or ``sparse (40 candidates per query, prefilter zstd)``."""
    layout = str(config.get("layout", DENSE))
    if layout == DENSE:
        return "dense (every pair)"
    prefilter = config.get("prefilter")
    name = prefilter.get("name", "?") if isinstance(prefilter, Mapping) else "?"
    return f"{layout} ({config.get('candidates')} candidates per query, prefilter {name})"


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
        # dense: (rows, references); sparse: (rows, candidates per row)
        self.plan = TilePlan(n_rows=int(shape[0]), n_cols=int(shape[1]), tile=self.tile)
        # "dense" (stores written before sparse ones existed have no layout attribute) or
        # "sparse" (nncd_ray.matrix.store.sparse)
        self.layout: str = str(attrs.get("layout", DENSE))
        self.sparse = self.layout != DENSE
        # number of references (columns of the dense matrix)
        self.n_refs = int(self.array("col_bits").shape[0])
        self.has_reversed = "pair_bits_reversed" in group
        # stores written before scored bytes were recorded lack these arrays
        self.has_scored_bytes = "row_scored_bytes" in group

    # -- opening -----------------------------------------------------------------------------

    @staticmethod
    def zarr_store(
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
        store = cls.zarr_store(url, options, read_only=mode == "r")
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
    def existing_tile(
        cls, url: str, *, storage_options: Mapping[str, Any] | None = None
    ) -> int | None:
        """The tile edge of the store at ``url``, or None when there is no store yet."""
        options = dict(storage_options or {})
        if cls._state(url, options) in ("missing", "empty"):
            return None
        tile = cls.open(url, storage_options=options).attrs.get("tile")
        return int(tile) if isinstance(tile, int) else None

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
        wanted = str(expected.get("layout", DENSE))
        if wanted != existing.layout:  # one line for the layout, not one per sparse setting
            layout_keys = ("layout ", "candidates ", "prefilter ", "hubs ")
            differences = [d for d in differences if not d.startswith(layout_keys)]
            differences.insert(
                0,
                f"layout {_describe_layout(existing.config)}, not {_describe_layout(expected)}",
            )
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
        store = cls.zarr_store(url, options, read_only=False)
        group = zarr.open_group(store=store, mode="a", use_consolidated=False)
        sides = {"row": rows, "col": rows if cols is None else cols}
        coordinates = {side: coordinate_names(side, corpus) for side, corpus in sides.items()}
        pair_names = ("pair_bits",) + (
            ("pair_bits_reversed",) if variant == "ncd-min" and not square else ()
        )
        for name in pair_names:
            new_array(
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
            create_document_arrays(group, side, corpus, plan.tile)
        create_tiles_done(group, plan)
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
        repaired = []
        for side, corpus in (("row", rows), ("col", rows if cols is None else cols)):
            expected = {
                f"{side}_bytes": document_bytes(corpus),
                f"{side}_ids": np.array(corpus.ids, dtype=str),
            }
            if corpus.labels is not None:
                expected[f"{side}_labels"] = label_array(corpus.labels)
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
                write_documents(self.group, side, corpus, self.tile, created=False)
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

    def row_bits(self) -> NDArray[np.float32]:
        """(n_rows,) float32 C(x) of the row documents, bits."""
        return np.asarray(self.array("row_bits")[:], dtype=np.float32)

    def col_bits(self) -> NDArray[np.float32]:
        """(n_cols,) float32 C(y) of the column documents, bits."""
        return np.asarray(self.array("col_bits")[:], dtype=np.float32)

    def scored_bytes(self, side: str) -> NDArray[np.int64] | None:
        """(n,) int64 UTF-8 bytes of each document of ``side`` that its code length covers (-1
        where no tile has scored it yet), or ``None`` for a store written before they were
        recorded."""
        if not self.has_scored_bytes:
            return None
        return np.asarray(self.array(f"{side}_scored_bytes")[:], dtype=np.int64)

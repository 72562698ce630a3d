"""MatrixStore (layout, aligned writes, markers, resume refusal, overwrite) and the store lease."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from nncd_ray.data.corpus import Corpus
from nncd_ray.errors import StoreError, StoreLocked, StoreMismatch, StoreNotFound
from nncd_ray.matrix.store.fingerprint import fingerprint_differences
from nncd_ray.matrix.store.layout import FORMAT
from nncd_ray.matrix.store.lease import Lease, LeaseInfo, lease_url
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.tiling import TilePlan

ROWS = Corpus.from_texts(
    [f"row document {i} é" for i in range(10)], labels=[i % 3 for i in range(10)], source="rows"
)
COLS = Corpus.from_texts(
    [f"column {i}" for i in range(7)], ids=[f"c{i}" for i in range(7)], labels=list("abcabca")
)
GZIP = {"compressor": "gzip", "level": 9}


def config(
    compressor: dict[str, object] = GZIP, variant: str = "ncd", square: bool = False
) -> dict[str, object]:
    return {
        "format": FORMAT,
        "variant": variant,
        "tile": 4,
        "square": square,
        "rows": {"n": len(ROWS), "content_hash": ROWS.content_hash()},
        "cols": {"n": len(COLS), "content_hash": COLS.content_hash()},
        "compressor": compressor,
    }


def make(
    path: Path,
    *,
    variant: str = "ncd",
    square: bool = False,
    compressor: dict[str, object] = GZIP,
    overwrite: bool = False,
) -> MatrixStore:
    cols = None if square else COLS
    plan = TilePlan(n_rows=10, n_cols=10 if square else 7, tile=4)
    return MatrixStore.create_or_resume(
        str(path),
        plan=plan,
        variant=variant,
        config=config(compressor=compressor, variant=variant, square=square),
        rows=ROWS,
        cols=cols,
        overwrite=overwrite,
    )


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def node(group: zarr.Group, name: str) -> zarr.Array:
    array = group[name]
    assert isinstance(array, zarr.Array)
    return array


def values(group: zarr.Group, name: str) -> list[Any]:
    return list(np.asarray(node(group, name)[:]).tolist())


def test_layout_is_the_public_one(tmp_path: Path) -> None:
    make(tmp_path / "m.zarr", variant="ncd-min")
    group = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    attrs: dict[str, Any] = dict(group.attrs.asdict())
    assert attrs["format"] == FORMAT
    assert attrs["variant"] == "ncd-min" and attrs["tile"] == 4
    assert attrs["square"] is False
    assert attrs["config"]["compressor"] == GZIP
    assert attrs["failed_tiles"] == {}
    assert attrs["progress"]["tiles_total"] == 6
    assert "zarr" in attrs["software"]
    pair = node(group, "pair_bits")
    assert pair.shape == (10, 7) and pair.dtype == np.float32 and pair.chunks == (4, 4)
    assert np.isnan(np.asarray(pair[:])).all()
    assert node(group, "pair_bits_reversed").shape == (10, 7)
    assert node(group, "row_bits").chunks == (4,) and node(group, "col_bits").shape == (7,)
    assert values(group, "row_bytes") == [len(t.encode()) for t in ROWS.texts]
    assert node(group, "row_bytes").dtype == np.int64
    assert node(group, "col_bytes").chunks == (4,)
    assert values(group, "row_ids") == list(ROWS.ids)
    assert values(group, "col_ids") == [f"c{i}" for i in range(7)]
    assert node(group, "row_labels").dtype == np.int64
    assert values(group, "col_labels") == list("abcabca")
    done = node(group, "tiles_done")
    assert done.shape == (3, 2) and done.chunks == (1, 1) and done.dtype == np.bool_


def test_square_store_has_equal_columns_and_no_reversed_array(tmp_path: Path) -> None:
    store = make(tmp_path / "sq.zarr", variant="ncd-min", square=True)
    assert store.square and not store.has_reversed
    col_ids, row_ids = store.array("col_ids")[:], store.array("row_ids")[:]
    assert col_ids.tolist() == row_ids.tolist() == list(ROWS.ids)
    assert (store.array("col_bytes")[:] == store.array("row_bytes")[:]).all()
    assert np.array_equal(store.array("row_labels")[:], store.array("col_labels")[:])


def test_tile_write_touches_only_its_own_chunks(tmp_path: Path) -> None:
    path = tmp_path / "m.zarr"
    store = make(path)
    before = set(snapshot(path))
    tile = store.plan.tile_at(2, 1)  # the bottom-right edge tile: rows 8-9, columns 4-6
    pair = np.arange(6, dtype=np.float64).reshape(2, 3) + 100
    store.write_tile(tile, row_bits=np.array([1.0, 2.0]), col_bits=np.ones(3), pair_bits=pair)
    written = set(snapshot(path)) - before
    assert written == {"pair_bits/c/2/1", "row_bits/c/2", "col_bits/c/1"}
    assert store.done_mask().sum() == 0  # data alone does not make a tile done
    store.mark_done(tile)
    mask = store.done_mask()
    assert mask.tolist() == [[False, False], [False, False], [False, True]]
    values = np.asarray(store.array("pair_bits")[:])
    assert np.array_equal(values[8:10, 4:7], pair.astype(np.float32))
    assert np.isnan(values[:8]).all() and np.isnan(values[:, :4]).all()
    assert store.row_bits()[8:].tolist() == [1.0, 2.0]
    with pytest.raises(StoreError):
        store.write_tile(tile, row_bits=np.ones(2), col_bits=np.ones(3), pair_bits=np.ones((3, 3)))


def test_reversed_array_is_required_for_rectangular_ncd_min(tmp_path: Path) -> None:
    store = make(tmp_path / "m.zarr", variant="ncd-min")
    tile = store.plan.tile_at(0, 0)
    with pytest.raises(StoreError, match="C\\(yx\\)"):
        store.write_tile(tile, row_bits=np.ones(4), col_bits=np.ones(4), pair_bits=np.ones((4, 4)))
    store.write_tile(
        tile,
        row_bits=np.ones(4),
        col_bits=np.ones(4),
        pair_bits=np.ones((4, 4)),
        pair_bits_reversed=np.full((4, 4), 2.0),
    )
    assert (store.array("pair_bits_reversed")[:4, :4] == 2).all()


def test_resume_with_same_config_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "m.zarr"
    store = make(path)
    tile = store.plan.tile_at(0, 0)
    store.write_tile(tile, row_bits=np.ones(4), col_bits=np.ones(4), pair_bits=np.full((4, 4), 5.0))
    store.mark_done(tile)
    again = make(path)
    assert again.done_mask()[0, 0]
    assert (again.array("pair_bits")[:4, :4] == 5).all()


def test_mismatch_is_refused_and_leaves_the_store_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "m.zarr"
    store = make(path)
    tile = store.plan.tile_at(1, 1)
    store.write_tile(tile, row_bits=np.ones(4), col_bits=np.ones(3), pair_bits=np.ones((4, 3)))
    store.mark_done(tile)
    before = snapshot(path)
    with pytest.raises(StoreMismatch, match="compressor gzip level 9, not bz2 level 9"):
        make(path, compressor={"compressor": "bz2", "level": 9})
    with pytest.raises(StoreMismatch, match="variant"):
        make(path, variant="ncd-min")
    assert snapshot(path) == before


def test_overwrite_recreates(tmp_path: Path) -> None:
    path = tmp_path / "m.zarr"
    store = make(path)
    store.mark_done(store.plan.tile_at(0, 0))
    plan = TilePlan(n_rows=10, n_cols=7, tile=4)
    fresh = MatrixStore.create_or_resume(
        str(path),
        plan=plan,
        variant="ncd",
        config=config(compressor={"compressor": "bz2", "level": 9}),
        rows=ROWS,
        cols=COLS,
        overwrite=True,
    )
    assert fresh.done_mask().sum() == 0
    assert MatrixStore.open(str(path)).config["compressor"]["compressor"] == "bz2"


def test_something_that_is_not_a_store_is_never_deleted(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("precious")
    with pytest.raises(StoreError, match="not a matrix store"):
        MatrixStore.delete(str(tmp_path / "notes"))
    with pytest.raises(StoreError, match="not a matrix store"):
        make(tmp_path / "notes", overwrite=True)
    with pytest.raises(StoreError, match="not a matrix store"):
        make(tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "precious"


def test_open_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFound):
        MatrixStore.open(str(tmp_path / "nothing.zarr"))


def test_fingerprint_differences_names_each_key() -> None:
    lines = fingerprint_differences(config(), {"tile": 8, "compressor": GZIP})
    assert lines == ["tile 4, not 8"]


def test_incomplete_interrupted_creation_is_reported(tmp_path: Path) -> None:
    zarr.open_group(str(tmp_path / "half.zarr"), mode="w")  # a group without the format attribute
    with pytest.raises(StoreError, match="not a complete nncd matrix store"):
        MatrixStore.open(str(tmp_path / "half.zarr"))


# -- lease -------------------------------------------------------------------------------------


def test_lease_lives_beside_the_store() -> None:
    assert lease_url("/data/m.zarr/") == "/data/m.zarr.lease.json"
    assert lease_url("s3://bucket/x/m.zarr") == "s3://bucket/x/m.zarr.lease.json"


def test_second_holder_is_refused_and_release_frees(tmp_path: Path) -> None:
    store = str(tmp_path / "m.zarr")
    with Lease(store, settle_s=0.0) as first:
        info = json.loads(Path(first.path).read_text())
        assert info["pid"] == os.getpid() and info["owner"] == first.owner
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
            Lease(store, settle_s=0.0).acquire()
    assert not Path(lease_url(store)).exists()
    with Lease(store, settle_s=0.0):
        pass


def write_lease(store: str, *, pid: int, heartbeat: float, host: str | None = None) -> None:
    lease = Lease(store)
    info = LeaseInfo(
        owner="someone",
        host=host or lease.host,
        pid=pid,
        acquired_at=heartbeat,
        heartbeat=heartbeat,
    )
    Path(lease.path).write_text(json.dumps(info.__dict__))


def test_stale_heartbeat_is_taken_over(tmp_path: Path) -> None:
    store = str(tmp_path / "m.zarr")
    write_lease(store, pid=os.getpid(), heartbeat=time.time() - 3600, host="elsewhere")
    with Lease(store, settle_s=0.0) as lease:
        assert json.loads(Path(lease.path).read_text())["owner"] == lease.owner


def test_fresh_lease_of_another_host_is_respected(tmp_path: Path) -> None:
    store = str(tmp_path / "m.zarr")
    write_lease(store, pid=1, heartbeat=time.time(), host="elsewhere")
    with pytest.raises(StoreLocked, match="host elsewhere"):
        Lease(store, settle_s=0.0).acquire()


def test_dead_process_on_this_host_is_taken_over(tmp_path: Path) -> None:
    store = str(tmp_path / "m.zarr")
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    write_lease(store, pid=int(child.stdout), heartbeat=time.time())
    with Lease(store, settle_s=0.0) as lease:
        assert lease.read() is not None


def test_heartbeat_renews_and_detects_takeover(tmp_path: Path) -> None:
    store = str(tmp_path / "m.zarr")
    lease = Lease(store, settle_s=0.0, renew_every_s=0.05).acquire()
    try:
        first = lease.read()
        time.sleep(0.3)
        second = lease.read()
        assert first is not None and second is not None and second.heartbeat > first.heartbeat
        lease.check()
        write_lease(store, pid=os.getpid(), heartbeat=time.time())  # someone else took it
        time.sleep(0.3)
        with pytest.raises(StoreLocked, match="lost the lease"):
            lease.check()
    finally:
        lease.release()
    assert Path(lease.path).exists()  # not ours any more: left alone


def test_same_compressor_shows_only_the_settings_that_differ() -> None:
    lines = fingerprint_differences(
        config(compressor={"compressor": "gzip", "level": 9, "zlib": "1.3"}),
        {"compressor": {"compressor": "gzip", "level": 6, "zlib": "1.3"}},
    )
    assert lines == ["compressor gzip level 9, not gzip level 6"]

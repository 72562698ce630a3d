"""The README's main job from the repository alone (issue 20, defect 7): ``--protocol`` without
``--data`` and without a local copy fetches AG News from the Hugging Face hub into a user cache,
or says in one line why it cannot and what to do. No test touches the network: the hub is either
off (``HF_HUB_OFFLINE=1``, ``datasets`` missing) or replaced by a fake loader."""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from paths import AGNEWS_CSV

from nncd_ray.cli.main import main
from nncd_ray.data.agnews import (
    AGNEWS_TEST_CONTENT_HASH,
    CACHE_ENV,
    DATA_ENV,
    OFFLINE_VARIABLES,
    agnews_path,
    agnews_rows,
    cached_agnews_path,
    fetch_agnews,
    load_agnews,
    write_agnews_csv,
)
from nncd_ray.data.protocols import load_protocol
from nncd_ray.errors import DatasetNotFound, InputError

SHARED_CSV = AGNEWS_CSV


def hub_records(path: Path) -> list[dict[str, Any]]:
    """What the hub's ``fancyzhx/ag_news`` test split holds for an original CSV: the text joined
    as ``title + " " + description`` and 0-based labels."""
    with path.open(encoding="utf-8", newline="") as handle:
        return [
            {"text": f"{title} {description}", "label": int(label) - 1}
            for label, title, description in csv.reader(handle)
        ]


@pytest.fixture
def no_local_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No --data, no $NNCD_AGNEWS, no ../shared/data beside the working directory, an empty
    cache; returns the cache directory."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv(DATA_ENV, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


# -- conversion ---------------------------------------------------------------------------------


def test_rows_are_the_original_layout() -> None:
    records = [
        {"text": "Title words here Description follows.", "label": 0},
        {"text": "Solo", "label": 3},
        {"text": "Two  spaces kept", "label": 2},
    ]
    rows = list(agnews_rows(records))
    assert rows == [
        ("1", "Title", "words here Description follows."),
        ("4", "Solo", ""),
        ("3", "Two", " spaces kept"),
    ]
    # the protocols' join (title + " " + description) gives back the hub's text
    assert [f"{t} {d}" for _, t, d in rows[:1] + rows[2:]] == [
        records[0]["text"],
        records[2]["text"],
    ]


@pytest.mark.parametrize(
    "record", [{"text": "x", "label": 4}, {"text": "x", "label": True}, {"label": 1}]
)
def test_bad_records_are_refused(record: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="record 0"):
        list(agnews_rows([record]))


@pytest.mark.skipif(not SHARED_CSV.exists(), reason="needs ../shared/data/agnews/test.csv")
def test_converted_hub_split_is_the_project_copy(tmp_path: Path) -> None:
    # built from the project's copy exactly as the hub builds its split from the original CSV
    path = tmp_path / "test.csv"
    assert write_agnews_csv(hub_records(SHARED_CSV), path) == 7600
    converted, original = load_agnews(path), load_agnews(SHARED_CSV)
    assert converted.content_hash() == original.content_hash() == AGNEWS_TEST_CONTENT_HASH
    for name in ("agnews-small", "agnews-self-1k"):
        a, b = load_protocol(name, path), load_protocol(name, SHARED_CSV)
        assert a.queries.ids == b.queries.ids and a.queries.texts == b.queries.texts
        assert (a.refs is None) == (b.refs is None)
        if a.refs is not None and b.refs is not None:
            assert a.refs.texts == b.refs.texts and a.refs.labels == b.refs.labels


# -- fetching ----------------------------------------------------------------------------------


class FakeHub:
    """A loader that serves ``records`` for ``serves`` and fails like an unreachable hub
    otherwise; counts its calls."""

    def __init__(self, records: list[dict[str, Any]], serves: str = "fancyzhx/ag_news") -> None:
        self.records, self.serves, self.calls = records, serves, []

    def __call__(self, name: str) -> Iterable[Mapping[str, Any]]:
        self.calls.append(name)
        if name != self.serves:
            raise ConnectionError(f"cannot reach the hub for {name}")
        return self.records


def few_records() -> list[dict[str, Any]]:
    return [{"text": f"title{i} text of news item {i}", "label": i % 4} for i in range(40)]


def test_fetch_caches_once_and_warns_about_other_data(
    no_local_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = FakeHub(few_records(), serves="ag_news")  # the first name fails, the old one works
    lines: list[str] = []
    with caplog.at_level(logging.WARNING):
        path = fetch_agnews(loader=hub, announce=lines.append)
    assert path == cached_agnews_path() == no_local_copy / "agnews" / "test.csv"
    assert hub.calls == ["fancyzhx/ag_news", "ag_news"] and len(lines) == 1
    assert load_agnews(path).texts[0] == "title0 text of news item 0"
    # 40 documents are not the 7,600 the project's figures come from: said once
    assert any("differs from the copy" in r.getMessage() for r in caplog.records)
    assert fetch_agnews(loader=hub) == path and len(hub.calls) == 2  # from the cache now
    assert not list(path.parent.glob(".*partial"))


def test_xdg_cache_home_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cached_agnews_path() == tmp_path / "xdg" / "nncd_ray" / "agnews" / "test.csv"


def test_unreachable_hub_says_both_ways_out(no_local_copy: Path) -> None:
    with pytest.raises(DatasetNotFound) as caught:
        fetch_agnews(loader=FakeHub([], serves="nowhere"))
    message = str(caught.value)
    assert "\n" not in message and "cannot reach the hub" in message
    assert "pass --data PATH/TO/agnews/test.csv" in message and "network access" in message
    assert not cached_agnews_path().exists()


def test_offline_matrix_says_so_in_one_line(
    no_local_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(
        ["matrix", "--protocol", "agnews-small", "--store", "m.zarr", "--executor", "local"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("nncd matrix: error: --protocol needs the AG News test set")
    assert "HF_HUB_OFFLINE is set" in err[0] and "pass --data" in err[0]
    assert not Path("m.zarr").exists()


def test_unreachable_hub_fails_fast_without_retries(
    no_local_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a closed port on this machine stands in for a hub out of reach (no traffic leaves it)
    for name in (*OFFLINE_VARIABLES, "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("nncd_ray.data.agnews.hub_loader", FakeHub([], serves="never called"))
    with pytest.raises(DatasetNotFound, match=r"cannot connect to 127\.0\.0\.1:9") as caught:
        agnews_path(None)
    assert "retry with network access" in str(caught.value)


def test_without_datasets_says_so(
    no_local_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    code = main(["study", "--protocol", "agnews-small", "--out", "s", "--compressors", "gzip"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "the datasets package is not installed" in err and "pip install" in err


@pytest.mark.skipif(not SHARED_CSV.exists(), reason="needs ../shared/data/agnews/test.csv")
def test_matrix_runs_from_a_fetched_copy(
    no_local_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the hub replaced by the project's copy as the hub serves it: the same protocol split
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    hub = FakeHub(hub_records(SHARED_CSV))
    monkeypatch.setattr("nncd_ray.data.agnews.hub_loader", hub)
    monkeypatch.setattr("nncd_ray.data.agnews.hub_unreachable", lambda: None)
    assert agnews_path(None) == cached_agnews_path() and hub.calls == ["fancyzhx/ag_news"]
    code = main(
        [
            "matrix", "--protocol", "agnews-small", "--store", "g.zarr", "--executor", "local",
            "--compressor", "gzip", "--tile", "100", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    assert "2 tiles computed" in capsys.readouterr().out
    assert hub.calls == ["fancyzhx/ag_news"]  # cached by agnews_path above

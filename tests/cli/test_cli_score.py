"""``nncd score`` end to end with gzip, the shared CLI helpers, ``--help`` of every subcommand."""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
from pathlib import Path

import pytest
from paths import AGNEWS_CSV

from nncd_ray.cli import main as cli_main
from nncd_ray.cli.common import (
    add_input_arguments,
    add_scorer_arguments,
    inputs_from_args,
    progress,
    scorer_spec_from_args,
)
from nncd_ray.cli.main import SUBCOMMANDS, main
from nncd_ray.errors import ConfigError

AGNEWS = AGNEWS_CSV


def gz_bits(text: str) -> float:
    return 8.0 * len(gzip.compress(text.encode("utf-8"), 9))


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def write_docs(path: Path, docs: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    return path


def test_score_documents_from_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--compressor", "gzip", "--text", "hello world", "--text", "ünï"]) == 0
    lines = json_lines(capsys.readouterr().out)
    assert [line["id"] for line in lines] == ["0", "1"]
    assert lines[0]["bits"] == gz_bits("hello world")
    assert lines[1]["bytes"] == len("ünï".encode())
    assert lines[1]["bits_per_byte"] == pytest.approx(gz_bits("ünï") / lines[1]["bytes"])


def test_score_pairs_of_one_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = {"a": "the cat sat", "b": "the cat sat on the mat", "c": "zebra"}
    path = write_docs(tmp_path / "docs.jsonl", docs)
    assert main(["score", "--compressor", "gzip", "--input", str(path), "--pairs"]) == 0
    lines = json_lines(capsys.readouterr().out)
    assert [(r["x"], r["y"]) for r in lines] == [(x, y) for x in docs for y in docs]
    for record in lines:
        x, y = docs[record["x"]], docs[record["y"]]
        assert record["bits"] == gz_bits(f"{x} {y}")
        assert record["x_bits"] == gz_bits(x) and record["y_bits"] == gz_bits(y)
        low, high = sorted((gz_bits(x), gz_bits(y)))
        assert record["ncd"] == pytest.approx((gz_bits(f"{x} {y}") - low) / high)


def test_score_queries_and_refs_to_output_file(tmp_path: Path) -> None:
    queries = write_docs(tmp_path / "q.jsonl", {"q1": "alpha beta", "q2": "gamma"})
    refs = write_docs(tmp_path / "r.jsonl", {"r1": "alpha", "r2": "delta", "r3": "beta"})
    out = tmp_path / "pairs.jsonl"
    argv = ["score", "--compressor", "gzip", "--queries", str(queries), "--refs", str(refs)]
    assert main([*argv, "--pairs", "--output", str(out)]) == 0
    lines = json_lines(out.read_text())
    assert len(lines) == 6 and lines[0]["x"] == "q1" and lines[0]["y"] == "r1"
    assert lines[5]["bits"] == gz_bits("gamma beta")
    docs_out = tmp_path / "docs.jsonl"
    assert main([*argv, "-o", str(docs_out)]) == 0
    sets = [(r["set"], r["id"]) for r in json_lines(docs_out.read_text())]
    assert sets == [
        ("queries", "q1"),
        ("queries", "q2"),
        ("refs", "r1"),
        ("refs", "r2"),
        ("refs", "r3"),
    ]


@pytest.mark.parametrize(("compressor", "level"), [("gzip", "1"), ("lzma", "0"), ("bz2", "1")])
def test_level_reaches_the_scorer(
    compressor: str, level: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "level test " * 50
    assert main(["score", "--compressor", compressor, "--level", level, "--text", text]) == 0
    bits = json_lines(capsys.readouterr().out)[0]["bits"]
    import bz2
    import lzma

    reference = {
        "gzip": lambda d: gzip.compress(d, 1),
        "lzma": lambda d: lzma.compress(d, preset=0),
        "bz2": lambda d: bz2.compress(d, 1),
    }[compressor]
    assert bits == 8 * len(reference(text.encode()))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "MISSING"], "no such file"),
        (["--text", "x", "--model", "gpt2"], "--model applies to --compressor lm only"),
        (["--text", "x", "--level", "99"], "level must be an integer from 0 to 9"),
        (["--input", "MISSING", "--protocol", "agnews-small"], "drop --input"),
        (["--queries", "MISSING"], "--queries and --refs go together"),
        ([], "no documents"),
        (["--text", ""], "is empty"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / a) if a == "MISSING" else a for a in argv]
    assert main(["score", "--compressor", "gzip", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nncd score: error: ")
    assert message in err


def test_invalid_utf8_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "\xc3\x28"}\n')
    assert main(["score", "--compressor", "gzip", "--input", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid UTF-8 at byte offset 27 (line 2" in err


def test_unwritable_output_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "no" / "such" / "dir" / "out.jsonl"
    assert main(["score", "--compressor", "gzip", "--text", "x", "-o", str(target)]) == 2
    assert "cannot write --output" in capsys.readouterr().err


@pytest.mark.skipif(not AGNEWS.exists(), reason=f"AG News test.csv not found at {AGNEWS}")
def test_protocol_input(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["score", "--compressor", "gzip", "--protocol", "agnews-small", "--data", str(AGNEWS)]
    assert main(argv) == 0
    lines = json_lines(capsys.readouterr().out)
    assert len(lines) == 300 and sum(r["set"] == "refs" for r in lines) == 100


def test_help_of_every_existing_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    existing = [n for n in SUBCOMMANDS if importlib.util.find_spec(f"nncd_ray.cli.{n}") is not None]
    assert "score" in existing
    for name in existing:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert f"nncd {name}" in capsys.readouterr().out


def test_parser_skips_only_absent_subcommand_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_main, "SUBCOMMANDS", ("score", "not_written_yet"))
    parser = cli_main.build_parser()
    assert parser.parse_args(["score", "--text", "x"]).command == "score"

    real_import = importlib.import_module

    def broken(name: str) -> object:
        if name == "nncd_ray.cli.score":
            raise ModuleNotFoundError("No module named 'torchvision'", name="torchvision")
        return real_import(name)

    monkeypatch.setattr(cli_main.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="torchvision"):
        cli_main.build_parser()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_input_arguments(parser)
    add_scorer_arguments(parser)
    return parser.parse_args(argv)


def test_scorer_spec_from_args() -> None:
    assert scorer_spec_from_args(parse([])).name == "lm"
    assert dict(scorer_spec_from_args(parse([])).options) == {}
    spec = scorer_spec_from_args(
        parse(["--model", "m", "--device", "cpu", "--max-doc-tokens", "100", "--no-prefix-cache"])
    )
    assert dict(spec.options) == {
        "model": "m",
        "device": "cpu",
        "max_doc_tokens": 100,
        "prefix_cache": False,
    }
    assert dict(scorer_spec_from_args(parse(["--compressor", "lzma", "--level", "3"])).options) == {
        "preset": 3
    }
    with pytest.raises(ConfigError, match="--level applies"):
        scorer_spec_from_args(parse(["--level", "3"]))
    with pytest.raises(ConfigError, match="--device, --token-budget applies"):
        scorer_spec_from_args(
            parse(["--compressor", "zstd", "--device", "cpu", "--token-budget", "9"])
        )
    with pytest.raises(SystemExit):
        parse(["--max-doc-tokens", "0"])


def test_inputs_from_args_reading_options(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("1;a;x\n2;b;y\n", encoding="utf-8")
    rows, cols = inputs_from_args(
        parse(
            [
                *("--input", str(path), "--text-columns", "2,3", "--label-column", "1"),
                *("--no-header", "--delimiter", ";"),
            ]
        )
    )
    assert cols is None and rows.texts == ("a x", "b y") and rows.labels == (1, 2)
    rows, _ = inputs_from_args(
        parse(["--input", str(path), "--text-columns", "2", "--no-labels", "--delimiter", ";"])
    )
    assert rows.labels is None
    with pytest.raises(ConfigError, match="one character"):
        inputs_from_args(parse(["--input", str(path), "--delimiter", ";;"]))
    with pytest.raises(ConfigError, match="--data goes with --protocol"):
        inputs_from_args(parse(["--input", str(path), "--data", str(path)]))


def test_progress_wrapper_is_silent_without_a_terminal() -> None:
    assert list(progress([1, 2, 3], "items")) == [1, 2, 3]
    bar = progress(5, "count")
    bar.update(5)
    bar.close()


def test_the_cli_starts_without_torch() -> None:
    """Every ``nncd`` command builds the whole parser; only the commands that run a model may
    import torch (about 1 s and 170 MiB), so building the parser must not."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from nncd_ray.cli.main import build_parser\n"
        "build_parser()\n"
        "heavy = [m for m in ('torch', 'transformers', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

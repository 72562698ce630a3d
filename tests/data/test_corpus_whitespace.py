"""Whitespace-only documents are refused like empty ones (issue 20, defect 10: on c8ebf8c they
were accepted, and a compressor scored a document with nothing in it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nncd_ray.cli.main import main
from nncd_ray.data.corpus import Corpus
from nncd_ray.data.loading import load_corpus
from nncd_ray.errors import InputError


@pytest.mark.parametrize("text", [" ", "\n\t  \r\n", "\u00a0\u2003"])
def test_whitespace_only_documents_are_refused(text: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"document '1' \(number 1\) of t holds only whitespace"):
        Corpus.from_texts(["fine", text], source="t")
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": text}) + "\n")
    with pytest.raises(InputError, match="holds only whitespace"):
        load_corpus(path)


def test_cli_names_the_document_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--compressor", "gzip", "--text", "a", "--text", "   "]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "document '1' (number 1)" in err
    assert "holds only whitespace" in err


def test_empty_documents_still_say_empty() -> None:
    with pytest.raises(InputError, match="is empty"):
        Corpus.from_texts(["fine", ""])

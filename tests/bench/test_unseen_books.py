"""The unseen-books benchmark: passages of books a model never saw, classified by book."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nncd_ray.bench import unseen_books
from nncd_ray.errors import ConfigError

VOCABULARIES = {
    "a": ["ship", "sea", "captain", "whale", "harpoon", "deck", "sail", "storm", "mast", "crew"],
    "b": [
        "garden",
        "rose",
        "morning",
        "lady",
        "letter",
        "ball",
        "dance",
        "estate",
        "cousin",
        "tea",
    ],
    "c": [
        "castle",
        "night",
        "count",
        "blood",
        "wolf",
        "coffin",
        "mist",
        "doctor",
        "diary",
        "train",
    ],
}


def write_books(folder: Path) -> Path:
    """Three small 'books', each its own vocabulary, 40 paragraphs of 60 words."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for name, words in VOCABULARIES.items():
        paragraphs = [" ".join(rng.choice(words, 60)) for _ in range(40)]
        (folder / f"{name}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return folder


def model_trained_on(tiny: Path, folder: Path, books: list[str]) -> Path:
    model = folder / "model"
    shutil.copytree(tiny, model)
    meta = {"books": [{"name": name} for name in books]}
    (model / "training.json").write_text(json.dumps(meta), encoding="utf-8")
    return model


def test_unseen_books_are_classified(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    data = write_books(tmp_path / "books")
    model = model_trained_on(tiny_gpt2_dir, tmp_path, ["a"])
    out = tmp_path / "unseen.json"
    code = unseen_books.main(
        ["--model", str(model), "--data-dir", str(data), "--per-book", "6", "--threads", "1",
         "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["books"] == ["b", "c"] and result["n_queries"] == result["n_refs"] == 6
    lm, gzip = result["rows"]
    assert (lm["compressor"], gzip["compressor"]) == ("lm", "gzip")
    # two vocabularies that share no word: gzip cannot miss
    assert gzip["accuracy"] == {"1": 1.0, "3": 1.0, "5": 1.0}
    assert gzip["saving_same_book"] > gzip["saving_other_book"]
    for row in (lm, gzip):
        assert 1 <= row["n1_max"] <= 6 and 0 <= row["never_nearest"] < 6
        assert set(row["accuracy_mutual_proximity"]) == {"1", "3", "5"}
        assert row["query_bits_per_byte"] > 0
        # the most used reference is named, with its book and text
        hub = row["top_hubs"][0]
        assert hub["nearest_for"] == row["n1_max"]
        assert hub["book"] in ("b", "c") and hub["text"] in result_refs(data, hub)


def result_refs(data: Path, hub: dict[str, object]) -> str:
    """The reference passage a hub names, as unseen_split draws it."""
    split = unseen_books.unseen_split(data, ["b", "c"], 6)
    return split.refs[int(hub["reference"])]  # type: ignore[call-overload]


def test_which_books_are_unseen(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    data = write_books(tmp_path / "books")
    # trained on two of three: one unseen book cannot be classified by book
    model = model_trained_on(tiny_gpt2_dir, tmp_path, ["a", "b"])
    with pytest.raises(ConfigError, match="at least 2 unseen books, got 1"):
        unseen_books.run(str(model), data, None, 6, 1)
    # a model without training.json needs --unseen; a named book must exist
    (model / "training.json").unlink()
    assert unseen_books.main(["--model", str(model), "--data-dir", str(data)]) == 2
    with pytest.raises(ConfigError, match="no book z"):
        unseen_books.unseen_split(data, ["b", "z"], 6)


def test_passages_are_spread_and_bounded() -> None:
    text = "\n\n".join(f"paragraph {i} " + "word " * 40 for i in range(30))
    chosen = unseen_books.passages(text, 5)
    assert len(chosen) == 5 and all(250 <= len(p) <= 1000 for p in chosen)
    assert chosen[0].startswith("paragraph 0") and chosen[-1] != chosen[0]
    with pytest.raises(ConfigError, match="passages"):
        unseen_books.passages(text, 500)

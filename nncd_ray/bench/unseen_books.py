"""NCD k-NN on books the model never saw: a Gutenberg-only check of what AG News showed.

On AG News the embedded model's NCD is dominated by "hubs", references near to every query (model
card, "Where the accuracy goes"), because news is out of its domain: after *any* unfamiliar
document it predicts the next one better. The books it was trained on cannot show that, and AG
News must not be used to choose a training recipe (issue #5). Books left out of training can:
train with ``nncd train --max-books N`` and this benchmark classifies passages of the other books
by book, with the LM and with gzip, and reports accuracy (plain NCD k-NN and with mutual
proximity), the hubness of the references and what knowing x saves on y::

    python -m nncd_ray.bench.unseen_books --model runs/first10 --json unseen.json

Passages: the books' first 95% only (the last 5% is the held-out test text of PROTOCOL.md and is
never read here), paragraphs joined until 250 characters, cut at 1,000, ``--per-book`` of them
spread evenly through each book, alternately query and reference. Which books are unseen comes
from the model's ``training.json`` (written by ``nncd train``), or from ``--unseen``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nncd_ray.errors import ConfigError, NNCDError
from nncd_ray.knn.accumulator import KNNAccumulator
from nncd_ray.knn.labels import LabelCodec
from nncd_ray.knn.mutual_proximity import ColumnMoments, mutual_proximity, row_moments
from nncd_ray.knn.statistics import Hubness
from nncd_ray.ncd import ncd_matrix
from nncd_ray.training.books import DEFAULT_DATA

KS = (1, 3, 5)
# characters of a hub reference shown in the report
HUB_PREVIEW_CHARS = 160


@dataclass(frozen=True, kw_only=True)
class Split:
    books: tuple[str, ...]
    queries: list[str]
    query_labels: list[str]
    refs: list[str]
    ref_labels: list[str]


def passages(text: str, count: int, *, min_chars: int = 250, max_chars: int = 1000) -> list[str]:
    """``count`` passages spread evenly through ``text``: paragraphs (blank-line separated, line
    wraps joined) grouped until ``min_chars``, cut at ``max_chars``."""
    groups: list[str] = []
    current = ""
    for paragraph in text.split("\n\n"):
        words = paragraph.split()
        if len(words) <= 3:
            continue
        current = f"{current} {' '.join(words)}".strip()
        if len(current) >= min_chars:
            groups.append(current[:max_chars])
            current = ""
    if len(groups) < count:
        raise ConfigError(f"only {len(groups)} passages of {min_chars}+ characters, {count} asked")
    picks = np.linspace(0, len(groups) - 1, count).astype(int)
    return [groups[i] for i in picks]


def trained_books(model_dir: Path) -> set[str]:
    """Names of the books the model was trained on, from its ``training.json``."""
    meta = Path(model_dir) / "training.json"
    if not meta.is_file():
        raise ConfigError(
            f"{model_dir} has no training.json saying which books it saw; pass --unseen BOOK,…"
        )
    return {book["name"] for book in json.loads(meta.read_text())["books"]}


def unseen_split(
    data_dir: Path, unseen: Sequence[str], per_book: int, holdout_fraction: float = 0.05
) -> Split:
    """Queries and references from the first ``1 − holdout_fraction`` of each unseen book."""
    from nncd_ray.training.books import load_books

    if per_book < 2:
        raise ConfigError("--per-book must be at least 2 (a query and a reference per book)")
    books = {book.name: book for book in load_books(data_dir, holdout_fraction)}
    missing = sorted(set(unseen) - set(books))
    if missing:
        raise ConfigError(f"no book {', '.join(missing)} in {data_dir}")
    if len(unseen) < 2:
        raise ConfigError(
            f"classifying by book needs at least 2 unseen books, got {len(unseen)}: train with "
            "nncd train --max-books N, fewer than the books in the folder"
        )
    split = Split(books=tuple(unseen), queries=[], query_labels=[], refs=[], ref_labels=[])
    for name in unseen:
        for i, passage in enumerate(passages(books[name].train, per_book)):
            (split.queries if i % 2 == 0 else split.refs).append(passage)
            (split.query_labels if i % 2 == 0 else split.ref_labels).append(name)
    return split


def _classify(distances: np.ndarray, split: Split) -> tuple[dict[str, float], Hubness]:
    """Accuracy per k of the queries against the references, and the hubness at k = 1."""
    codec = LabelCodec.from_labels(split.ref_labels, split.query_labels)
    accumulator = KNNAccumulator(split.ref_labels, KS, codec)
    accumulator.add_block(distances)
    accuracy = {str(m.k): m.accuracy for m in accumulator.metrics(split.query_labels)}
    return accuracy, accumulator.hubness()[0]


def evaluate(name: str, scorer: Any, split: Split) -> dict[str, Any]:
    """Accuracy (plain and mutual proximity), hubness and savings of one compressor."""
    started = time.perf_counter()
    tile = scorer.score_tile(split.queries, split.refs)
    distances = ncd_matrix(tile.row_bits, tile.col_bits, tile.pair_bits)
    moments = ColumnMoments(len(split.refs))
    moments.add(distances)
    proximity = mutual_proximity(distances, *row_moments(distances), *moments.mean_std())

    plain, hubs = _classify(distances, split)
    by_proximity, _ = _classify(proximity, split)
    saving = 1.0 - (tile.pair_bits - tile.row_bits[:, None]) / tile.col_bits[None, :]
    same = np.equal.outer(split.query_labels, split.ref_labels)
    n_bytes = sum(len(q.encode("utf-8")) for q in split.queries)
    top_hubs = [
        {
            "reference": column,
            "book": split.ref_labels[column],
            "nearest_for": count,
            # what any query saves on this reference, on average, against all references' mean
            "mean_saving": float(saving[:, column].mean()),
            "bits": float(tile.col_bits[column]),
            "text": split.refs[column][:HUB_PREVIEW_CHARS],
        }
        for column, count in hubs.top[:3]
    ]
    return {
        "compressor": name,
        "accuracy": plain,
        "accuracy_mutual_proximity": by_proximity,
        "n1_skewness": hubs.skewness,
        "n1_max": hubs.max_count,
        "never_nearest": hubs.never,
        "top_hubs": top_hubs,
        "mean_saving_all": float(saving.mean()),
        # mean of (C(y) − C(y|x)) / C(y) over pairs of the same book / of different books
        "saving_same_book": float(saving[same].mean()),
        "saving_other_book": float(saving[~same].mean()),
        "query_bits_per_byte": float(tile.row_bits.sum() / n_bytes),
        "seconds": time.perf_counter() - started,
    }


@dataclass(frozen=True, kw_only=True)
class UnseenBooksResult:
    model: str
    books: tuple[str, ...]
    n_queries: int
    n_refs: int
    rows: tuple[dict[str, Any], ...]


def run(
    model: str, data_dir: Path, unseen: Sequence[str] | None, per_book: int, threads: int
) -> UnseenBooksResult:
    import torch

    from nncd_ray.scorers.classical import GzipScorer
    from nncd_ray.scorers.lm import LMScorer

    if unseen is None:
        seen = trained_books(Path(model))
        unseen = sorted(p.stem for p in Path(data_dir).glob("*.txt") if p.stem not in seen)
    split = unseen_split(data_dir, unseen, per_book)
    torch.set_num_threads(threads)
    lm = LMScorer(model, device="cpu", dtype="fp32")
    rows = (evaluate("lm", lm, split), evaluate("gzip", GzipScorer(), split))
    return UnseenBooksResult(
        model=model,
        books=split.books,
        n_queries=len(split.queries),
        n_refs=len(split.refs),
        rows=rows,
    )


def to_markdown(result: UnseenBooksResult) -> str:
    lines = [
        f"NCD k-NN by book on {', '.join(result.books)} (unseen by {result.model}): "
        f"{result.n_queries} queries × {result.n_refs} references",
        "",
        "| compressor | acc k=1 | k=3 | k=5 | with mutual proximity k=1 | k=3 | k=5 | N_1 skew | "
        "max N_1 | saving same book | other book |",
        "|---|" + "---:|" * 10,
    ]
    for row in result.rows:
        plain, mp = row["accuracy"], row["accuracy_mutual_proximity"]
        lines.append(
            f"| {row['compressor']} | "
            + " | ".join(f"{plain[str(k)]:.3f}" for k in KS)
            + " | "
            + " | ".join(f"{mp[str(k)]:.3f}" for k in KS)
            + f" | {row['n1_skewness']:.2f} | {row['n1_max']} | "
            f"{row['saving_same_book']:+.2%} | {row['saving_other_book']:+.2%} |"
        )
    for row in result.rows:
        for hub in row.get("top_hubs", ()):
            preview = " ".join(hub["text"].split())[:100]
            lines.append(
                f"- {row['compressor']} hub: reference {hub['reference']} ({hub['book']}), nearest "
                f"for {hub['nearest_for']} queries, mean saving {hub['mean_saving']:+.2%} "
                f"(all references {row['mean_saving_all']:+.2%}): {preview!r}"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model directory (trained on some books)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder of *.txt books")
    parser.add_argument(
        "--unseen", help="comma-separated book names (default: those not in training.json)"
    )
    parser.add_argument("--per-book", type=int, default=60, help="passages per book (60)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON")
    args = parser.parse_args(argv)
    unseen = [name for name in args.unseen.split(",") if name] if args.unseen else None
    try:
        result = run(args.model, args.data_dir, unseen, args.per_book, args.threads)
    except NNCDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(to_markdown(result), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

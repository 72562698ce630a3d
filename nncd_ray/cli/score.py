"""``nncd score``: code lengths of documents, C(x), and of pairs, C(xy), as JSON lines.

One JSON object per line, on stdout or in ``--output``:

- documents (default): ``{"id", "bits", "bytes", "scored_bytes", "bits_per_byte"}``, bits = C(x),
  bytes = UTF-8 bytes of the text, scored_bytes = the bytes C(x) covers (fewer when the compressor
  truncated the document: then also ``"truncated": true``, and a warning with the count on stderr),
  bits_per_byte = bits / scored_bytes; with two sets (``--queries``/``--refs``, a rectangular
  ``--protocol``) each line also says ``"set": "queries"`` or ``"refs"``.
- ``--pairs``: ``{"x", "y", "bits", "x_bits", "y_bits", "ncd"}`` for every row x and column y,
  bits = C(xy) with x first: all ordered pairs of ``--input`` (n², the diagonal included, as in
  the matrix), or every query against every reference.

Documents come from a file (``--input``, ``--queries``/``--refs``, ``--protocol``) or from the
command line (``--text A --text B``; ids ``0``, ``1``, …). Code lengths are in bits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import numpy as np

from nncd_ray.cli.common import (
    add_input_arguments,
    add_scorer_arguments,
    inputs_from_args,
    progress,
    scorer_spec_from_args,
)
from nncd_ray.data.corpus import Corpus
from nncd_ray.errors import ConfigError
from nncd_ray.matrix.store.truncation import TruncationCount, count_from_arrays
from nncd_ray.ncd import ncd_matrix
from nncd_ray.scorers import BaseScorer, make_scorer
from nncd_ray.scorers.base import utf8_lengths

# documents per document_bits call, and rows per pair_bits call (bounds memory, paces output)
DOC_BLOCK = 256
ROW_BLOCK = 16


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "score",
        help="code lengths C(x) of documents and C(xy) of pairs, as JSON lines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--text",
        action="append",
        metavar="TEXT",
        help="a document given on the command line (repeat for more; ids 0, 1, …)",
    )
    parser.add_argument(
        "--pairs", action="store_true", help="score every (row, column) pair instead of documents"
    )
    parser.add_argument("--output", "-o", metavar="PATH", help="write here instead of stdout")
    parser.add_argument(
        "--progress", action="store_true", help="show progress even when stderr is no terminal"
    )
    add_input_arguments(parser)
    add_scorer_arguments(parser)
    return parser


def _number(value: float) -> float | None:
    """JSON has no NaN/inf: a value that is not finite is written as null."""
    return float(value) if math.isfinite(value) else None


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


@contextmanager
def _open_output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise ConfigError(f"cannot write --output {path}: {exc.strerror}") from exc
    with handle:
        yield handle


def _write_documents(
    out: TextIO, scorer: BaseScorer, corpus: Corpus, set_name: str | None, force: bool
) -> TruncationCount:
    """One line per document; returns how many the compressor truncated."""
    bar = progress(len(corpus), f"score {set_name or 'documents'}", unit="doc", force=force)
    full_bytes, scored_bytes = [], []
    for start in range(0, len(corpus), DOC_BLOCK):
        texts = corpus.texts[start : start + DOC_BLOCK]
        bits = scorer.document_bits(texts)
        full = utf8_lengths(texts)
        scored = np.asarray(scorer.scored_bytes(texts), dtype=np.int64)
        full_bytes.append(full)
        scored_bytes.append(scored)
        for offset in range(len(texts)):
            record: dict[str, Any] = {
                "id": corpus.ids[start + offset],
                "bits": _number(bits[offset]),
                "bytes": int(full[offset]),
                "scored_bytes": int(scored[offset]),
                "bits_per_byte": _number(bits[offset] / max(int(scored[offset]), 1)),
            }
            if scored[offset] < full[offset]:
                record["truncated"] = True
            if set_name is not None:
                record["set"] = set_name
            out.write(_line(record))
        bar.update(len(texts))
    bar.close()
    return count_from_arrays(np.concatenate(full_bytes), np.concatenate(scored_bytes))


def _write_pairs(
    out: TextIO, scorer: BaseScorer, rows: Corpus, cols: Corpus | None, force: bool
) -> None:
    row_bits = scorer.document_bits(rows.texts)
    columns = rows if cols is None else cols
    col_bits = row_bits if cols is None else scorer.document_bits(columns.texts)
    bar = progress(len(rows) * len(columns), "score pairs", unit="pair", force=force)
    for start in range(0, len(rows), ROW_BLOCK):
        stop = min(start + ROW_BLOCK, len(rows))
        pair_bits = scorer.pair_bits(rows.texts[start:stop], columns.texts)
        distance = ncd_matrix(row_bits[start:stop], col_bits, pair_bits)
        for i in range(stop - start):
            for j in range(len(columns)):
                record = {
                    "x": rows.ids[start + i],
                    "y": columns.ids[j],
                    "bits": _number(pair_bits[i, j]),
                    "x_bits": _number(row_bits[start + i]),
                    "y_bits": _number(col_bits[j]),
                    "ncd": _number(distance[i, j]),
                }
                out.write(_line(record))
        bar.update((stop - start) * len(columns))
    bar.close()


def run(args: argparse.Namespace) -> int:
    if args.text:
        given = [
            f"--{name}" for name in ("input", "queries", "refs", "protocol") if getattr(args, name)
        ]
        if given:
            raise ConfigError(f"--text gives the documents itself; drop {' and '.join(given)}")
        rows: Corpus = Corpus.from_texts(args.text, source="--text")
        cols: Corpus | None = None
    else:
        rows, cols = inputs_from_args(args)
    scorer = make_scorer(scorer_spec_from_args(args))
    counts: list[TruncationCount] = []
    with _open_output(args.output) as out:
        if args.pairs:
            _write_pairs(out, scorer, rows, cols, args.progress)
        elif cols is None:
            counts.append(_write_documents(out, scorer, rows, None, args.progress))
        else:
            counts.append(_write_documents(out, scorer, rows, "queries", args.progress))
            counts.append(_write_documents(out, scorer, cols, "refs", args.progress))
    if args.pairs:
        counts.append(_pair_truncation(scorer, rows, cols))
    _warn_truncation(counts)
    return 0


def _pair_truncation(scorer: BaseScorer, rows: Corpus, cols: Corpus | None) -> TruncationCount:
    """Truncation of the documents of ``--pairs`` (each document counted once)."""
    texts = list(rows.texts) + ([] if cols is None else list(cols.texts))
    return count_from_arrays(utf8_lengths(texts), scorer.scored_bytes(texts))


def _warn_truncation(counts: list[TruncationCount]) -> None:
    """One warning on stderr when the compressor truncated any document."""
    if not counts or not any(c.documents for c in counts):
        return
    total = TruncationCount(
        recorded=True,
        documents_scored=sum(c.documents_scored for c in counts),
        documents=sum(c.documents for c in counts),
        bytes_total=sum(c.bytes_total for c in counts),
        bytes_scored=sum(c.bytes_scored for c in counts),
    )
    print(f"nncd score: warning: {total.warning()}", file=sys.stderr)

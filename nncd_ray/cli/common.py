"""Arguments and helpers shared by the subcommands: input documents, compressor choice, progress.

Input: ``--input PATH`` (one set: a square matrix), ``--queries PATH --refs PATH`` (rows and columns
of a rectangular matrix), or ``--protocol NAME`` (a split of ``shared/bench/PROTOCOL.md``, read from
``--data``). Compressor: ``--compressor`` (the registry's names) plus the language model's options,
or ``--level`` for a classical one; a flag that does not apply is a :class:`ConfigError`, never
silently ignored.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from nncd_ray.data.agnews import DATA_ENV, agnews_path
from nncd_ray.data.corpus import Corpus
from nncd_ray.data.loading import (
    DEFAULT_ID_FIELD,
    DEFAULT_LABEL_FIELD,
    DEFAULT_TEXT_FIELDS,
    FORMATS,
    load_corpus,
)
from nncd_ray.data.protocols import PROTOCOLS, load_protocol
from nncd_ray.errors import ConfigError
from nncd_ray.scorers import CLASSICAL, ScorerSpec, available
from nncd_ray.scorers.classical import LEVELS

if TYPE_CHECKING:
    from tqdm import tqdm

# --level means this constructor option for each classical compressor
LEVEL_OPTION: dict[str, str] = {name: levels.option for name, levels in LEVELS.items()}
# LM scorer option -> the flag that sets it (for messages)
LM_FLAGS: dict[str, str] = {
    "model": "--model",
    "revision": "--revision",
    "device": "--device",
    "dtype": "--dtype",
    "max_doc_tokens": "--max-doc-tokens",
    "truncation": "--truncation",
    "token_budget": "--token-budget",
    "trust_remote_code": "--trust-remote-code",
    "prefix_cache": "--no-prefix-cache",
}


def parse_options(pairs: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as JSON when they parse)."""
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, not {pair!r}")
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    return options


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``--input`` / ``--queries`` + ``--refs`` / ``--protocol`` and how to read the files."""
    group = parser.add_argument_group("input documents")
    group.add_argument(
        "--input", metavar="PATH", help="one document set; the matrix is square (rows = columns)"
    )
    group.add_argument("--queries", metavar="PATH", help="row documents (queries); needs --refs")
    group.add_argument(
        "--refs", metavar="PATH", help="column documents (references); needs --queries"
    )
    group.add_argument(
        "--protocol",
        metavar="NAME",
        choices=sorted(PROTOCOLS),
        help=f"a benchmark split of AG News: {', '.join(PROTOCOLS)}",
    )
    add_reading_arguments(group)


def add_reading_arguments(group: argparse._ArgumentGroup) -> None:
    """``--data`` (for ``--protocol``) and how to read document files: format, fields, CSV."""
    group.add_argument(
        "--data",
        metavar="PATH",
        help=f"AG News test.csv (or its folder) for --protocol (default: ${DATA_ENV}, else "
        "../shared/data/agnews/test.csv, else fetched once from the Hugging Face hub into "
        "~/.cache/nncd_ray)",
    )
    group.add_argument(
        "--format",
        choices=FORMATS,
        help="input format (default: from the suffix; a directory or hf:NAME is a Hugging Face "
        "dataset)",
    )
    group.add_argument("--split", metavar="NAME", help="split of a Hugging Face dataset")
    group.add_argument(
        "--text-columns",
        metavar="COLS",
        help="text fields: names or 1-based column numbers, comma-separated, joined with a space "
        "(default: text)",
    )
    group.add_argument(
        "--label-column", metavar="COL", help="label field (default: 'label' where present)"
    )
    group.add_argument("--no-labels", action="store_true", help="ignore labels in the input")
    group.add_argument(
        "--id-column",
        metavar="COL",
        help="id field (default: 'id' where present, else row numbers from 0)",
    )
    header = group.add_mutually_exclusive_group()
    header.add_argument(
        "--header",
        dest="header",
        action="store_const",
        const=True,
        default=None,
        help="the CSV's first row names the columns",
    )
    header.add_argument(
        "--no-header",
        dest="header",
        action="store_const",
        const=False,
        help="the CSV's first row is data (default: guessed)",
    )
    group.add_argument(
        "--delimiter", metavar="CHAR", help="CSV delimiter (default ',' or tab for .tsv; '\\t' ok)"
    )


def announce(message: str) -> None:
    """One line on stderr about something slow the command is about to do."""
    print(f"nncd: {message}", file=sys.stderr, flush=True)


def _delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    value = {"\\t": "\t", "tab": "\t"}.get(value, value)
    if len(value) != 1:
        raise ConfigError(f"--delimiter must be one character, not {value!r}")
    return value


def corpus_from_args(args: argparse.Namespace, path: str) -> Corpus:
    """Read one document set with the reading options of :func:`add_input_arguments`."""
    label_column = getattr(args, "label_column", None)
    return load_corpus(
        path,
        format=getattr(args, "format", None),
        text_fields=getattr(args, "text_columns", None) or DEFAULT_TEXT_FIELDS,
        label_field=None
        if getattr(args, "no_labels", False)
        else (label_column or DEFAULT_LABEL_FIELD),
        id_field=getattr(args, "id_column", None) or DEFAULT_ID_FIELD,
        header=getattr(args, "header", None),
        delimiter=_delimiter(getattr(args, "delimiter", None)),
        split=getattr(args, "split", None),
    )


def inputs_from_args(args: argparse.Namespace) -> tuple[Corpus, Corpus | None]:
    """(rows, columns); columns ``None`` means a square matrix of the rows with themselves."""
    given = [f"--{name}" for name in ("input", "queries", "refs") if getattr(args, name, None)]
    protocol = getattr(args, "protocol", None)
    if protocol:
        if given:
            raise ConfigError(f"--protocol reads its own documents; drop {' and '.join(given)}")
        data = agnews_path(getattr(args, "data", None), announce=announce)
        split = load_protocol(protocol, data)
        return split.queries, split.refs
    if getattr(args, "data", None):
        raise ConfigError("--data goes with --protocol; use --input or --queries/--refs for files")
    if getattr(args, "input", None):
        if len(given) > 1:
            raise ConfigError("give either --input or --queries with --refs, not both")
        return corpus_from_args(args, args.input), None
    queries, refs = getattr(args, "queries", None), getattr(args, "refs", None)
    if queries and refs:
        return corpus_from_args(args, queries), corpus_from_args(args, refs)
    if queries or refs:
        raise ConfigError("--queries and --refs go together; for one set use --input")
    raise ConfigError("no documents: give --input PATH, --queries PATH --refs PATH, or --protocol")


def add_scorer_arguments(parser: argparse.ArgumentParser, *, default: str = "lm") -> None:
    """``--compressor`` and its options (LM options, or ``--level`` for classical ones)."""
    group = parser.add_argument_group("compressor")
    group.add_argument(
        "--compressor",
        choices=available(),
        default=default,
        help=f"code lengths from a language model (lm) or a classical compressor (default: "
        f"{default})",
    )
    group.add_argument(
        "--model", metavar="PATH|ID", help="lm: model directory or hub id (default: embedded)"
    )
    group.add_argument("--revision", help="lm: hub revision (branch, tag or commit)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), help="lm: device (auto)")
    group.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="lm: weight dtype (auto: fp32 on CPUs and for the embedded model, bf16 on GPUs; "
        "logits are float32 in every case)",
    )
    group.add_argument(
        "--max-doc-tokens",
        type=positive_int,
        metavar="N",
        help="lm: tokens kept per document (default: (context - 3) // 2 so a pair fits)",
    )
    group.add_argument(
        "--truncation",
        choices=("truncate", "error"),
        help="lm: what to do with a longer document (truncate)",
    )
    group.add_argument(
        "--token-budget",
        type=positive_int,
        metavar="N",
        help="lm: input tokens per forward pass (default: 8192 on a CPU; on a GPU from the "
        "model's shape and the GPU's memory)",
    )
    group.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="lm: allow model code from the hub",
    )
    group.add_argument(
        "--no-prefix-cache",
        dest="prefix_cache",
        action="store_const",
        const=False,
        default=None,
        help="lm: score every pair as one full sequence (the naive baseline for benchmarks)",
    )
    group.add_argument(
        "--level",
        type=int,
        metavar="N",
        help="; ".join(levels.describe(name) for name, levels in LEVELS.items()),
    )


def scorer_spec_from_args(args: argparse.Namespace) -> ScorerSpec:
    """The scorer the arguments ask for; options not given keep the scorer's own defaults."""
    name: str = args.compressor
    lm_options: dict[str, Any] = {
        option: getattr(args, option, None)
        for option in LM_FLAGS
        if getattr(args, option, None) is not None
    }
    level = getattr(args, "level", None)
    if name == "lm":
        if level is not None:
            raise ConfigError(
                f"--level applies to the classical compressors ({', '.join(CLASSICAL)}), not lm"
            )
        return ScorerSpec(name=name, options=lm_options)
    if lm_options:
        flags = ", ".join(LM_FLAGS[option] for option in lm_options)
        raise ConfigError(f"{flags} applies to --compressor lm only, not {name}")
    if level is None:
        return ScorerSpec(name=name, options={})
    if name not in LEVELS:
        raise ConfigError(f"--level applies to {', '.join(CLASSICAL)}, not {name}")
    levels = LEVELS[name]
    # checked here too, so that a bad level is refused before a cluster starts
    return ScorerSpec(name=name, options={levels.option: levels.check(name, level)})


def progress(
    items: Iterable[Any] | int | None = None,
    desc: str = "",
    *,
    total: int | None = None,
    unit: str = "it",
    force: bool = False,
) -> tqdm:
    """A tqdm bar on stderr over ``items`` (or counting to ``items`` when it is an int).

    Shown only when stderr is a terminal, unless ``force``; otherwise the bar is disabled but still
    iterates and accepts ``update``/``close``, so callers need no branch.
    """
    from tqdm import tqdm

    disable = not (force or sys.stderr.isatty())
    if isinstance(items, int):
        return tqdm(total=items, desc=desc, unit=unit, file=sys.stderr, disable=disable)
    return tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, disable=disable)


__all__ = [
    "LEVEL_OPTION",
    "add_input_arguments",
    "add_reading_arguments",
    "add_scorer_arguments",
    "corpus_from_args",
    "inputs_from_args",
    "positive_int",
    "progress",
    "scorer_spec_from_args",
]

"""``nncd knn``: k-NN classification of a matrix store's rows, with a readable report.

    nncd knn --store runs/gzip.zarr --k 1,3,5,7 --json report.json --predictions preds.jsonl

Reads the store in row blocks (memory bounded by ``--block-rows`` × columns), derives NCD for the
store's variant (or ``--variant``), classifies every query for every k in one pass (leave-one-out on
a square store) and prints accuracy, macro-F1, bits per byte and confusion matrices. Documents the
compressor truncated are counted (a warning on stderr), and bits per byte divides by the bytes
scored. A bad or undecodable tile is refused in one line naming it (exit 2). A sparse store
(``nncd matrix --candidates M``) is classified among each query's candidates.

    nncd knn --store runs/pruned.zarr --compare runs/dense.zarr --curve 10,20,40,80

compares a pruned store with the dense store of the same documents: recall@k of the exact
neighbours among the candidates, accuracy of both, pairs computed, and (``--curve``) the same
figures derived for other numbers of candidates.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nncd_ray.cli.common import parse_options
from nncd_ray.errors import ConfigError
from nncd_ray.knn.evaluate import EvaluationConfig, evaluate_store
from nncd_ray.knn.mutual_proximity import HUBNESS_REDUCTIONS
from nncd_ray.ncd import VARIANTS


def parse_ks(text: str) -> tuple[int, ...]:
    """argparse type: ``"1,3,5,7"`` -> (1, 3, 5, 7)."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--k takes comma-separated integers like 1,3,5,7, not {text!r}"
        ) from None
    if not values or any(k < 1 for k in values):
        raise argparse.ArgumentTypeError(f"--k values must be positive integers, not {text!r}")
    return values


def add_store_reading_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the k-NN stage shared by ``nncd knn`` and ``nncd study``."""
    parser.add_argument(
        "--k", type=parse_ks, default=(1, 3, 5, 7), metavar="K,…", help="neighbours (1,3,5,7)"
    )
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        help="NCD variant (default: the store's); ncd-min on a rectangular store needs C(yx)",
    )
    parser.add_argument(
        "--block-rows",
        type=int,
        metavar="N",
        help="rows read per block (default: as many as fit 16 MiB of float64 distances)",
    )
    parser.add_argument(
        "--hubness-reduction",
        choices=HUBNESS_REDUCTIONS,
        default="none",
        help="none: neighbours by NCD (the protocol's k-NN); mp: by mutual proximity of the NCD, "
        "which discounts references near to everything (one more pass over the store)",
    )


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "knn",
        help="k-NN classification and report from a matrix store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store", required=True, metavar="PATH|URL", help="the matrix store")
    add_store_reading_arguments(parser)
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="classify the fully computed rows of an incomplete matrix (and list the others)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    parser.add_argument(
        "--predictions",
        metavar="PATH",
        help="write one JSON line per query (id, label, k -> label)",
    )
    parser.add_argument("--markdown", metavar="PATH", help="write the report as Markdown")
    parser.add_argument(
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        help="fsspec option of a remote store (repeatable), e.g. endpoint_url=http://…",
    )
    parser.add_argument(
        "--compare",
        metavar="DENSE",
        help="--store is a pruned (sparse) store: compare it with this dense store of the same "
        "documents (recall@k of the exact neighbours among the candidates, accuracy of both, "
        "pairs computed) instead of the usual report",
    )
    parser.add_argument(
        "--curve",
        type=parse_ks,
        metavar="M,…",
        help="with --compare: also derive recall and accuracy for these numbers of candidates "
        "per query, from the dense store and the pruned store's prefilter",
    )
    return parser


def run_compare(args: argparse.Namespace) -> int:
    """``nncd knn --store PRUNED --compare DENSE``."""
    from nncd_ray.knn.pruning import compare_stores

    comparison = compare_stores(
        args.store,
        args.compare,
        ks=tuple(args.k),
        curve=tuple(args.curve or ()),
        variant=args.variant,
        storage_options=parse_options(args.storage_option, "--storage-option") or None,
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(comparison.to_dict(), out, indent=2)
            out.write("\n")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as out:
            out.write(comparison.to_markdown())
    print(comparison.to_markdown(), end="")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.curve and not args.compare:
        raise ConfigError("--curve derives pruning figures from a dense store: give --compare")
    if args.compare:
        if args.predictions or args.allow_partial or args.hubness_reduction != "none":
            raise ConfigError(
                "--compare takes complete stores and the protocol's k-NN: leave out "
                "--predictions, --allow-partial and --hubness-reduction"
            )
        return run_compare(args)
    report = evaluate_store(
        EvaluationConfig(
            store=args.store,
            ks=tuple(args.k),
            variant=args.variant,
            allow_partial=args.allow_partial,
            block_rows=args.block_rows,
            hubness_reduction=args.hubness_reduction,
            storage_options=parse_options(args.storage_option, "--storage-option") or None,
        )
    )
    if args.json:
        report.write_json(args.json)
    if args.predictions:
        report.write_predictions(args.predictions)
    if args.markdown:
        report.write_markdown(args.markdown)
    print(report.to_markdown(), end="")
    if report.truncation_note is not None:
        print(f"nncd knn: warning: {report.truncation_note}", file=sys.stderr)
    if report.hub_note is not None:
        print(f"nncd knn: note: {report.hub_note}", file=sys.stderr)
    return 0

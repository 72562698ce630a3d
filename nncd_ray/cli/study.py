"""``nncd study``: compression vs accuracy of several compressors on one benchmark split.

    nncd study --protocol agnews-small --data ../shared/data/agnews/test.csv \\
        --compressors gzip,bz2,lzma,zstd,lm --out runs/study-small

For each compressor: the matrix (computed, or resumed from ``OUT/<compressor>.zarr``), the k-NN
report, then one table (bits per byte, accuracy and macro-F1 per k, pairs/s) as ``study.json`` and
``study.md``, and PNG plots when matplotlib is installed. ``lm`` is the embedded model;
``lm:MODEL`` a model directory or hub id. Every study also shows a baseline row beside the NCD
rows: k-NN over all-MiniLM-L6-v2 sentence embeddings (the ``[embed]`` extra), what a user would
pick instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nncd_ray.cli.common import announce, positive_int
from nncd_ray.cli.knn import parse_ks
from nncd_ray.data.agnews import DATA_ENV, agnews_path
from nncd_ray.data.protocols import PROTOCOLS
from nncd_ray.errors import ConfigError
from nncd_ray.knn.mutual_proximity import HUBNESS_REDUCTIONS
from nncd_ray.matrix.prefilter import DEFAULT_PREFILTER
from nncd_ray.matrix.prefilter import available as prefilter_names
from nncd_ray.ncd import VARIANTS
from nncd_ray.study.config import StudyConfig, parse_compressors
from nncd_ray.study.run import run_study


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "study",
        help="compression vs accuracy of several compressors on a benchmark split",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--protocol", required=True, choices=sorted(PROTOCOLS), help="split of PROTOCOL.md"
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        help=f"AG News test.csv or its folder (default: ${DATA_ENV}, else "
        "../shared/data/agnews/test.csv, else fetched once from the Hugging Face hub into "
        "~/.cache/nncd_ray)",
    )
    parser.add_argument(
        "--compressors",
        default="gzip,bz2,lzma,zstd",
        metavar="LIST",
        help="comma-separated: gzip, bz2, lzma, zstd, lm, lm:MODEL (default gzip,bz2,lzma,zstd)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--k", type=parse_ks, default=(1, 3, 5, 7), metavar="K,…", help="neighbours (1,3,5,7)"
    )
    parser.add_argument("--variant", choices=VARIANTS, default="ncd", help="NCD variant (ncd)")
    parser.add_argument(
        "--hubness-reduction",
        choices=HUBNESS_REDUCTIONS,
        default="none",
        help="none: neighbours by NCD (PROTOCOL.md's k-NN); mp: by mutual proximity of the NCD",
    )
    parser.add_argument(
        "--executor", choices=("local", "ray"), default="local", help="matrix engine (local)"
    )
    parser.add_argument(
        "--actors", type=positive_int, default=1, metavar="N", help="scorer actors for ray (1)"
    )
    parser.add_argument("--address", metavar="ADDR", help="Ray cluster to join (ray executor)")
    parser.add_argument(
        "--tile", type=positive_int, default=64, metavar="T", help="tile edge in documents (64)"
    )
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument(
        "--no-embedding-baseline",
        action="store_true",
        help="leave out the baseline row (k-NN over all-MiniLM-L6-v2 sentence embeddings, what a "
        "user would pick instead of NCD; needs pip install 'nncd_ray[embed]')",
    )
    parser.add_argument(
        "--candidates",
        type=positive_int,
        metavar="M",
        help="prune every matrix to each query's M candidates (as nncd matrix --candidates)",
    )
    parser.add_argument(
        "--prefilter",
        choices=prefilter_names(),
        help=f"what chooses the candidates of --candidates ({DEFAULT_PREFILTER})",
    )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        dest="progress",
        action="store_const",
        const=True,
        default=None,
        help="show the matrix progress bar (default: when stderr is a terminal)",
    )
    progress.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.prefilter is not None and args.candidates is None:
        raise ConfigError(f"--prefilter {args.prefilter} needs --candidates M")
    data = agnews_path(args.data, announce=announce)
    result = run_study(
        StudyConfig(
            protocol=args.protocol,
            data=str(data),
            compressors=parse_compressors(args.compressors),
            out=args.out,
            ks=tuple(args.k),
            variant=args.variant,
            tile=args.tile,
            executor=args.executor,
            actors=args.actors,
            address=args.address,
            progress=sys.stderr.isatty() if args.progress is None else args.progress,
            plots=not args.no_plots,
            hubness_reduction=args.hubness_reduction,
            embedding_baseline=not args.no_embedding_baseline,
            candidates=args.candidates,
            prefilter=args.prefilter or DEFAULT_PREFILTER,
        )
    )
    print(result.to_markdown(), end="")
    for row in result.rows:
        if row.report.truncation_note is not None:
            print(
                f"nncd study: warning: {row.compressor}: {row.report.truncation_note}",
                file=sys.stderr,
            )
    if result.baseline_note:
        print(f"nncd study: note: {result.baseline_note}", file=sys.stderr)
    if result.plots_skipped and not args.no_plots:
        print(f"nncd study: plots skipped: {result.plots_skipped}", file=sys.stderr)
    return 0

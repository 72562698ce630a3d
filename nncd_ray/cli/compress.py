"""``nncd compress``: lossless compression of any file with a causal language model.

The file is tokenized (invalid UTF-8 and text the tokenizer cannot reproduce are stored raw), each
token is range-coded with the model's next-token probabilities, and the result is written as a
self-describing ``.nncd`` container (model hash, dtype, coding parameters, CRC-32 of the original).
Decompress with the same model, dtype and kind of device (``nncd decompress``). ``-`` reads standard
input / writes standard output.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nncd_ray.cli.common import positive_int
from nncd_ray.codec.coder import CodecConfig
from nncd_ray.codec.files import check_output, load_codec, read_input, write_output
from nncd_ray.scorers.lm.devices import DEVICES, DTYPES, resolve_device, resolve_dtype


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--revision``, ``--trust-remote-code``, ``--force`` (decompress too)."""
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH|HUB_ID",
        help="causal LM: a saved model directory or a hub id (default: the embedded model)",
    )
    parser.add_argument("--revision", default=None, help="hub revision of --model")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow the model's own code (hub models)"
    )
    parser.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "compress",
        help="compress a file losslessly with a language model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="IN", help="file to compress ('-' = standard input)")
    parser.add_argument("output", metavar="OUT", help="the .nncd file ('-' = standard output)")
    add_model_arguments(parser)
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where the model runs (default cpu; decompress on the same kind of device)",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="weights dtype (auto: fp32 CPU, bf16 GPU)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (recorded in the file; float results depend on it; default 1)",
    )
    parser.add_argument(
        "--window",
        type=positive_int,
        default=None,
        help="most tokens the model attends over (default: its context length)",
    )
    parser.add_argument(
        "--overlap",
        type=positive_int,
        default=None,
        help="tokens of context kept when the window slides (default: window/2)",
    )
    parser.add_argument(
        "--lane-tokens",
        type=positive_int,
        default=CodecConfig.lane_tokens,
        help="open one coding lane per this many tokens (default %(default)s)",
    )
    parser.add_argument(
        "--max-lanes",
        type=positive_int,
        default=CodecConfig.max_lanes,
        help="most lanes coded in lockstep (default %(default)s; 1 = best ratio, slowest)",
    )
    parser.add_argument(
        "--stats", action="store_true", help="print one JSON line of statistics on stderr"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    check_output(args.output, source=args.input, force=args.force)
    data = read_input(args.input)
    device = resolve_device(args.device)
    config = CodecConfig(
        window=args.window,
        overlap=args.overlap,
        lane_tokens=args.lane_tokens,
        max_lanes=args.max_lanes,
        threads=args.threads,
    )
    codec = load_codec(
        args.model,
        device=device,
        dtype=resolve_dtype(args.dtype, device),
        config=config,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )
    blob, stats = codec.compress_with_stats(data)
    write_output(args.output, blob)
    if args.stats:
        report = {
            "original_bytes": stats.original_bytes,
            "container_bytes": stats.container_bytes,
            "bits_per_byte": 8 * stats.container_bytes / max(1, stats.original_bytes),
            "model_bits": round(stats.model_bits, 3),
            "payload_bits": stats.payload_bits,
            "raw_bytes": stats.raw_bytes,
            "tokens": stats.tokens,
            "lanes": stats.lanes,
            "seconds": round(stats.seconds, 3),
        }
        print(json.dumps(report), file=sys.stderr)
    return 0

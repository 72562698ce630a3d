"""``nncd classify``: ask a running ``nncd serve`` service about documents.

    nncd classify --url http://127.0.0.1:8000 --token-file token "Oil prices rise again"
    nncd classify --url http://127.0.0.1:8000 --no-auth --json - < article.txt
    nncd classify --url http://127.0.0.1:8000 --distances --top 5 "Stocks fall"

Prints one line per document: the predicted label, the nearest reference (id, label, NCD) and
the document's bits per byte under the service's compressor; ``--json`` prints the service's
answer as JSON instead. A refused request (HTTP 400: an empty document, one too long for the
model under ``--truncation error``…) or a service out of reach is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nncd_ray.cli.common import positive_int
from nncd_ray.errors import ConfigError


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "classify",
        help="classify documents with a running `nncd serve` service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="documents; '-' reads stdin")
    parser.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument(
        "--token-file",
        metavar="PATH",
        help="the service's bearer token (default: $NNCD_SERVE_TOKEN, else the file "
        "$NNCD_SERVE_TOKEN_PATH)",
    )
    auth.add_argument("--no-auth", action="store_true", help="send no token")
    parser.add_argument(
        "--k", type=positive_int, metavar="K", help="neighbours that vote (the service's --k)"
    )
    parser.add_argument(
        "--distances",
        action="store_true",
        help="ask POST /distances: NCD to every reference (or the --top nearest)",
    )
    parser.add_argument(
        "--top", type=positive_int, metavar="M", help="with --distances: the M nearest only"
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="seconds per request (300)"
    )
    return parser


def _texts(given: list[str]) -> list[str]:
    if given.count("-") > 1:
        raise ConfigError("'-' (stdin) may be given once")
    return [sys.stdin.read() if text == "-" else text for text in given]


def summary_line(answer: dict[str, Any]) -> str:
    """One answer of ``/classify`` (or ``/distances --top``) as one tab-separated line."""
    parts = [str(answer["label"])] if "label" in answer else []
    neighbours = answer.get("neighbours") or []
    if neighbours:
        first = neighbours[0]
        ncd = "nan" if first["ncd"] is None else f"{first['ncd']:.6f}"
        parts.append(f"nearest {first['id']} ({first['label']}) ncd {ncd}")
    bpb = answer.get("bits_per_byte")
    parts.append("bits/byte " + ("n/a" if bpb is None else f"{bpb:.3f}"))
    if answer.get("truncated"):
        parts.append(f"truncated to {answer['scored_bytes']} bytes")
    return "\t".join(parts)


def run(args: argparse.Namespace) -> int:
    from nncd_ray.serve.client import ServiceClient

    if args.top is not None and not args.distances:
        raise ConfigError("--top goes with --distances")
    if args.k is not None and args.distances:
        raise ConfigError("--k goes with /classify, not --distances")
    client = ServiceClient(
        args.url,
        token="" if args.no_auth else None,
        token_file=args.token_file,
        timeout_s=args.timeout,
    )
    texts = _texts(args.texts)
    if args.distances:
        answers = client.distances(texts, top=args.top)
    else:
        answers = client.classify(texts, k=args.k)
    for answer in answers:
        if args.json or (args.distances and args.top is None):
            print(json.dumps(answer, ensure_ascii=False))
        else:
            print(summary_line(answer))
    return 0

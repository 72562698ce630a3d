"""``nncd status``: how far a matrix store is (tiles done and failed, pairs, throughput, config).

Tile counts come from the store's completion markers (the truth); throughput and compute time come
from the progress counters the driver writes every few seconds. Also says whether a driver holds the
store's lease right now.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from nncd_ray.cli.common import parse_options
from nncd_ray.lease import Lease
from nncd_ray.store import MatrixStore


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="progress and configuration of a matrix store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store", required=True, metavar="PATH|URL", help="the Zarr store")
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option of the store, repeatable (endpoint_url=…, key=…, secret=…)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser


def store_status(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``nncd status`` shows, as a JSON-able dict."""
    store = MatrixStore.open(url, storage_options=storage_options)
    mask = store.done_mask()
    plan = store.plan
    pairs_done = sum(
        plan.tile_at(int(r), int(c)).pairs for r, c in zip(*mask.nonzero(), strict=True)
    )
    progress = store.progress
    lease = Lease(url, storage_options=storage_options)
    holder = lease.read()
    return {
        "store": url,
        "shape": list(plan.shape),
        "square": store.square,
        "variant": store.variant,
        "tile": store.tile,
        "tiles_total": plan.n_tiles,
        "tiles_done": int(mask.sum()),
        "tiles_failed": len(store.failed_tiles),
        "pairs_total": plan.n_pairs,
        "pairs_done": int(pairs_done),
        "complete": bool(mask.all()),
        "pairs_per_second": progress.get("pairs_per_second"),
        "compute_seconds": progress.get("compute_seconds"),
        "runs": progress.get("runs"),
        "nodes": progress.get("nodes", {}),
        "updated_at": progress.get("updated_at"),
        "failed_tiles": store.failed_tiles,
        "config": store.config,
        "scorer": store.attrs.get("scorer"),
        "software": store.attrs.get("software"),
        "lease": None if holder is None else {**holder.__dict__, "stale": lease.is_stale(holder)},
    }


def _human(status: dict[str, Any]) -> str:
    total, done, failed = status["tiles_total"], status["tiles_done"], status["tiles_failed"]
    compressor = status["config"].get("compressor", {})
    described = " ".join(f"{k}={v}" for k, v in sorted(compressor.items()) if k != "compressor")
    lines = [
        f"store: {status['store']}",
        f"matrix: {status['shape'][0]} x {status['shape'][1]} "
        f"({'square' if status['square'] else 'rectangular'}), tile {status['tile']}, "
        f"variant {status['variant']}",
        f"compressor: {compressor.get('compressor', '?')} {described}".rstrip(),
        f"tiles: {done} done, {failed} failed, {total} total ({100.0 * done / total:.1f}%)",
        f"pairs: {status['pairs_done']:,} of {status['pairs_total']:,}",
    ]
    if status.get("pairs_per_second") is not None:
        lines.append(
            f"throughput: {status['pairs_per_second']:,.0f} pairs/s in the last run; "
            f"{status.get('compute_seconds') or 0.0:,.1f} s of compute over "
            f"{status.get('runs') or 0} run(s) on {len(status.get('nodes') or {})} node(s)"
        )
    holder = status["lease"]
    if holder is None:
        lines.append("driver: none running")
    else:
        age = time.time() - holder["heartbeat"]
        state = "stale" if holder["stale"] else "running"
        lines.append(
            f"driver: {state} on host {holder['host']} pid {holder['pid']} "
            f"(heartbeat {age:.0f} s ago)"
        )
    for key, error in sorted(status["failed_tiles"].items()):
        lines.append(f"failed tile {key}: {error}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    options = parse_options(args.storage_option, "--storage-option") or None
    status = store_status(args.store, options)
    print(json.dumps(status, indent=2) if args.json else _human(status))
    return 0

"""``nncd status``: how far a matrix store is (tiles done and failed, pairs, throughput, config).

Tile counts come from the store's completion markers (the truth); throughput and compute time come
from the progress counters the driver writes every few seconds. Also says whether a driver holds the
store's lease right now, and how many documents the compressor truncated.

``--verify`` reads every done tile (one read of the computed part of the matrix) and checks its
checksums and values; it names each bad tile and exits 1 when there is one (0 when all are good,
2 on errors). Running the same ``nncd matrix`` command again recomputes the bad tiles.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from nncd_ray.cli.common import parse_options
from nncd_ray.errors import NNCDError
from nncd_ray.matrix.store.chunks import UndecodableChunk
from nncd_ray.matrix.store.integrity import verify_store
from nncd_ray.matrix.store.lease import Lease
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.storage_errors import store_errors
from nncd_ray.matrix.store.truncation import count_truncated

# exit code of --verify when the store has bad tiles (errors exit 2, as everywhere)
EXIT_BAD_TILES = 1


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
    parser.add_argument(
        "--verify",
        action="store_true",
        help="read every done tile and check its checksums and values; name the bad ones and "
        "exit 1 if there is one",
    )
    return parser


def store_status(
    url: str, storage_options: dict[str, Any] | None = None, *, verify: bool = False
) -> dict[str, Any]:
    """Everything ``nncd status`` shows, as a JSON-able dict (``verify``: also a ``verify``
    entry, :meth:`nncd_ray.matrix.store.integrity.VerifyReport.to_dict`)."""
    with store_errors(url):
        return _status(url, storage_options, verify=verify)


def _status(url: str, storage_options: dict[str, Any] | None, *, verify: bool) -> dict[str, Any]:
    store = MatrixStore.open(url, storage_options=storage_options)
    mask = store.done_mask()
    plan = store.plan
    pairs_done = sum(
        plan.tile_at(int(r), int(c)).pairs for r, c in zip(*mask.nonzero(), strict=True)
    )
    progress = store.progress
    lease = Lease(url, storage_options=storage_options)
    holder = lease.read()
    verified = verify_store(store, mask=mask).to_dict() if verify else None
    truncation = _truncation(store)
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
        "truncation": truncation,
        "documents_truncated": None if truncation is None else truncation["documents"],
        **_sparse(store, verify=verify),
        **({"verify": verified} if verified is not None else {}),
    }


def _sparse(store: MatrixStore, *, verify: bool) -> dict[str, Any]:
    """A sparse store's layout, candidates per query, references and prefilter (with ``verify``,
    the prefilter's problems too); ``{"layout": "dense"}`` for a dense store."""
    if not store.sparse:
        return {"layout": store.layout}
    from nncd_ray.matrix.prefilter import make_prefilter
    from nncd_ray.matrix.store.sparse import prefilter_url

    described = dict(store.attrs.get("prefilter") or {})
    prefilter: dict[str, Any] = {**described, "complete": False}
    try:
        reader = make_prefilter(str(described.get("name"))).open(
            prefilter_url(store.url), store.storage_options
        )
        prefilter["complete"] = reader.complete()
        if verify:
            prefilter["problems"] = reader.verify()
    except NNCDError as exc:  # not written yet, or an unknown prefilter
        prefilter["problems"] = [str(exc)] if verify else []
    except (KeyError, FileNotFoundError):
        prefilter["problems"] = ["not computed yet"] if verify else []
    return {
        "layout": store.layout,
        "candidates": store.plan.n_cols,
        "references": store.n_refs,
        "prefilter": prefilter,
        "hubs": store.attrs.get("hubs"),
    }


def _truncation(store: MatrixStore) -> dict[str, Any] | None:
    """The store's :class:`~nncd_ray.matrix.store.truncation.TruncationCount` as a dict; ``None``
    when its document arrays do not decode (``--verify`` names them)."""
    try:
        return count_truncated(store).to_dict()
    except UndecodableChunk:
        return None


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
    if status.get("layout") == "sparse":
        prefilter = status["prefilter"]
        lines.append(
            f"sparse: {status['candidates']} candidates of {status['references']} references per "
            f"query, chosen by prefilter {prefilter.get('name', '?')} "
            f"({'complete' if prefilter.get('complete') else 'not complete'})"
        )
        hubs = status.get("hubs")
        if hubs:
            lines.append(
                f"hubs: {', '.join(str(i) for i in hubs['ids'])} in every query's candidates "
                f"(probe: {len(hubs['sample_rows'])} sample queries, {hubs['pairs']:,} pairs)"
            )
        lines += [
            f"prefilter problem: {problem} (its data is read only to choose candidates again, "
            "which a resume does when a band of them is bad)"
            for problem in prefilter.get("problems", [])
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
    lines += _truncation_lines(status.get("truncation"))
    verified = status.get("verify")
    if verified is not None:
        lines += _verify_lines(verified)
    return "\n".join(lines)


def _truncation_lines(truncation: dict[str, Any] | None) -> list[str]:
    if truncation is None:
        return ["documents: the byte arrays do not decode (see --verify)"]
    if not truncation["recorded"]:
        return ["truncation: not recorded (a store written before scored bytes were kept)"]
    if not truncation["documents"]:
        return [f"truncation: none ({truncation['documents_scored']} documents scored whole)"]
    share = 100.0 * truncation["bytes_scored"] / max(truncation["bytes_total"], 1)
    return [
        f"truncation: {truncation['documents']} of {truncation['documents_scored']} documents "
        f"truncated by the compressor; code lengths cover {truncation['bytes_scored']:,} of "
        f"{truncation['bytes_total']:,} bytes ({share:.1f}%), and bits per byte divides by those"
    ]


def _verify_lines(verified: dict[str, Any]) -> list[str]:
    bad = verified["tiles_bad"]
    lines = [
        f"verify: {verified['tiles_checked']} done tiles read in {verified['seconds']:.2f} s, "
        + ("all good" if verified["ok"] else f"{bad} bad tile{'s' if bad != 1 else ''}")
    ]
    for problem in verified["bad_tiles"]:
        (r, c), (r0, r1), (c0, c1) = problem["tile"], problem["rows"], problem["cols"]
        lines.append(
            f"bad tile ({r}, {c}) (rows {r0}-{r1 - 1}, columns {c0}-{c1 - 1}): "
            f"{problem['array']} {problem['reason']}"
        )
    lines += [f"bad array {name}: {reason}" for name, reason in verified["bad_arrays"].items()]
    if not verified["ok"]:
        lines.append(
            "fix: run the same `nncd matrix` command again; it recomputes the bad tiles"
            + (" and rewrites the document arrays" if verified["bad_arrays"] else "")
        )
    return lines


def run(args: argparse.Namespace) -> int:
    options = parse_options(args.storage_option, "--storage-option") or None
    status = store_status(args.store, options, verify=args.verify)
    print(json.dumps(status, indent=2) if args.json else _human(status))
    if args.verify and not status["verify"]["ok"]:
        return EXIT_BAD_TILES
    return 0

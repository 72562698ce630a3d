"""Candidate pruning without a pruned run: recall and accuracy over M for several prefilters, from
one complete dense store (``nncd knn --compare`` does it for one real pruned store).

    python -m nncd_ray.bench.pruning --dense runs/medium-lm.zarr --protocol agnews-medium \\
        --data ../shared/data/agnews/test.csv --prefilters zstd,gzip,embed \\
        --candidates 7,10,20,40,80,160 --work runs/prefilters --json pruning.json

Each prefilter's data is computed once (in-process, resumable) into ``WORK/<name>.zarr`` from the
protocol's documents, which must be the dense store's (their fingerprints are compared). For each
M the candidates are the prefilter's M nearest (distance, then column index: what ``nncd matrix
--candidates M`` stores), recall@k is the share of each query's exact k nearest neighbours among
them, and the accuracy is k-NN on the dense NCD restricted to them: what a pruned store gives,
since it holds the dense store's values at its candidates (exactly for classical compressors; an
LM's float32 rounding differs with the batch shape, ~5e-5 bits). Prints one Markdown table per
prefilter.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nncd_ray.data.protocols import PROTOCOLS, load_protocol
from nncd_ray.knn.evaluate import NCDRows
from nncd_ray.knn.pruning import PruningCurve, pruning_curve
from nncd_ray.matrix.config import MatrixConfig
from nncd_ray.matrix.hubs import choose_hubs, hubs_first, sample_rows
from nncd_ray.matrix.prefilter import available, make_prefilter
from nncd_ray.matrix.prefilter.base import PrefilterJob
from nncd_ray.matrix.store.fingerprint import corpus_fingerprint
from nncd_ray.matrix.store.lease import Lease
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.scorers import ScorerSpec


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def dense_hubs(dense: NCDRows, hubs: int, sample: int) -> list[int]:
    """The hubs a probe of ``sample`` queries would choose: the dense store holds the very pairs
    the probe computes (the same sample rows against every reference)."""
    rows = sample_rows(dense.reader.n_rows, sample)
    distances = np.stack([dense.distances(i, i + 1)[0] for i in rows])
    return [int(c) for c in choose_hubs(distances, hubs)]


def prefilter_curve(
    dense: NCDRows,
    name: str,
    split: Any,
    work: Path,
    ms: tuple[int, ...],
    ks: tuple[int, ...],
    hubs: list[int] | None = None,
) -> tuple[PruningCurve, dict[str, Any]]:
    """The curve of one prefilter (``hubs`` first in every query's candidates, when given), its
    data computed into ``work/<name>.zarr`` if missing."""
    prefilter = make_prefilter(name)
    url = str(work / f"{name}.zarr")
    config = MatrixConfig(
        store=url, scorer=ScorerSpec(name="synthetic"), executor="local", progress=False
    )
    started = time.perf_counter()
    with Lease(url) as lease:
        job = PrefilterJob(
            url=url,
            config=config,
            rows=split.queries,
            cols=split.refs,
            lease=lease,
            started=started,
        )
        summary = prefilter.compute(job)
    reader = prefilter.open(url)
    columns = np.asarray(hubs or [], dtype=np.int64)
    curve = pruning_curve(
        dense, lambda start, stop: hubs_first(reader.distances(start, stop), columns), ms, ks
    )
    return curve, {**summary.to_dict(), "fingerprint": prefilter.fingerprint()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dense", required=True, help="a complete dense store of the protocol")
    parser.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS))
    parser.add_argument("--data", required=True, help="AG News test.csv")
    parser.add_argument("--prefilters", default="zstd,embed", help=f"of {', '.join(available())}")
    parser.add_argument("--candidates", type=parse_ints, default=(7, 10, 20, 40, 80, 160))
    parser.add_argument("--k", type=parse_ints, default=(1, 3, 5, 7))
    parser.add_argument("--work", required=True, help="folder for the prefilters' data")
    parser.add_argument(
        "--hubs",
        type=int,
        default=0,
        help="also each prefilter with this many hubs first (as nncd matrix --hubs)",
    )
    parser.add_argument("--hub-sample", type=int, default=10, help="the probe's queries (10)")
    parser.add_argument("--json", help="write every curve as JSON here")
    args = parser.parse_args(argv)
    split = load_protocol(args.protocol, args.data)
    if split.refs is None:
        parser.error("pruning needs a queries × references protocol")
    store = MatrixStore.open(args.dense)
    for key, corpus in (("rows", split.queries), ("cols", split.refs)):
        if store.config.get(key) != corpus_fingerprint(corpus):
            parser.error(f"{args.dense} was not computed from {args.protocol}'s {key}")
    dense = NCDRows(StoreReader(store), None)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    compressor = store.config.get("compressor", {})
    results = []
    print(
        f"# Pruning {args.dense} ({compressor.get('compressor')} {compressor.get('model', '')}), "
        f"{args.protocol}: {store.plan.n_rows} queries × {store.plan.n_cols} references\n"
    )
    hubs = dense_hubs(dense, args.hubs, args.hub_sample) if args.hubs else []
    probe = args.hub_sample * store.plan.n_cols
    for name in (n.strip() for n in args.prefilters.split(",") if n.strip()):
        for chosen in [None, hubs] if hubs else [None]:
            ms = tuple(m for m in args.candidates if m >= len(chosen or ()))
            curve, prefilter = prefilter_curve(dense, name, split, work, ms, args.k, chosen)
            results.append({"prefilter": prefilter, "hubs": chosen, "curve": curve.to_dict()})
            title = f"## prefilter {name} ({prefilter['work']})"
            if chosen:
                title += (
                    f", hubs {chosen} first (the probe: {args.hub_sample} sample queries × "
                    f"{store.plan.n_cols} references = {probe:,} more pairs, not in the share "
                    "below)"
                )
            print(title + "\n")
            print("\n".join(curve.markdown_table()) + "\n")
            sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"dense": args.dense, "protocol": args.protocol, "results": results}, indent=2
            )
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

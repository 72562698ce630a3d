"""Peak memory of the k-NN stage on a large store: it must stay bounded by a row block, not n².

    python -m nncd_ray.bench.knn_memory --n 20000 --tile 1000 --limit-mib 512 --json knn_memory.json

Writes an ``n × n`` store of synthetic float32 pair bits (chunk by chunk, one tile at a time, never
the whole matrix in memory; 20,000² float32 is 1.6 GB before compression) in the public layout
under a temporary folder, then runs ``nncd knn`` on it in a subprocess and reads that process's
peak resident set size from ``wait4``. The store is deleted afterwards unless ``--keep``. Also
measures the RSS of a subprocess that only builds the ``nncd`` command line (interpreter, numpy,
zarr and whatever the subcommands import), so the figure reads as "fixed cost + working set".

The synthetic matrix has class structure (4 classes; a pair of the same class is cheaper to
compress), so the accuracy printed is a sanity check that real neighbours were found.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zarr

FORMAT = "nncd-matrix/1"
N_CLASSES = 4


def write_synthetic_store(path: Path, *, n: int, tile: int, seed: int = 0) -> None:
    """An ``n × n`` rectangular store (rows and columns: two sets of ``n``), written tile by tile.

    C(x) ~ U(800, 2400) bits; C(xy) = max + f · (sum − max) with f ~ U(0.45, 0.75) for a pair of
    the same class and U(0.60, 0.90) otherwise.
    """
    rng = np.random.default_rng(seed)
    row_bits = rng.uniform(800, 2400, n).astype(np.float32)
    col_bits = rng.uniform(800, 2400, n).astype(np.float32)
    row_labels = rng.integers(0, N_CLASSES, n)
    col_labels = rng.integers(0, N_CLASSES, n)
    group = zarr.open_group(str(path), mode="w")
    pair_bits = group.create_array(
        "pair_bits", shape=(n, n), chunks=(tile, tile), dtype="float32", fill_value=np.nan
    )
    grid = -(-n // tile)
    for tr in range(grid):
        rows = slice(tr * tile, min(n, (tr + 1) * tile))
        for tc in range(grid):
            cols = slice(tc * tile, min(n, (tc + 1) * tile))
            x = row_bits[rows, None].astype(np.float64)
            y = col_bits[None, cols].astype(np.float64)
            same = row_labels[rows, None] == col_labels[None, cols]
            low = np.where(same, 0.45, 0.60)
            fraction = low + 0.30 * rng.random((x.shape[0], y.shape[1]))
            larger = np.maximum(x, y)
            pair_bits[rows, cols] = (larger + fraction * (x + y - larger)).astype(np.float32)
    for side, bits, labels in (("row", row_bits, row_labels), ("col", col_bits, col_labels)):
        group.create_array(f"{side}_bits", shape=(n,), chunks=(tile,), dtype="float32")[:] = bits
        group.create_array(f"{side}_bytes", shape=(n,), chunks=(tile,), dtype="int64")[:] = (
            np.round(bits / 6.0).astype(np.int64)
        )
        group.create_array(f"{side}_ids", shape=(n,), dtype=str)[:] = np.array(
            [f"{side}{i}" for i in range(n)], dtype=str
        )
        group.create_array(f"{side}_labels", shape=(n,), dtype="int64")[:] = labels
    done = group.create_array(
        "tiles_done", shape=(grid, grid), chunks=(1, 1), dtype="bool", fill_value=False
    )
    done[:] = True
    group.attrs.update(
        {
            "variant": "ncd",
            "tile": tile,
            "square": False,
            "config": {"compressor": {"compressor": "synthetic"}},
            "progress": {},
            "failed_tiles": {},
            "software": {},
        }
    )
    group.attrs["format"] = FORMAT


def run_measured(command: list[str]) -> tuple[int, float, float, float]:
    """(exit code, peak RSS in MiB, wall seconds, CPU seconds) of a subprocess, from ``wait4``."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux
    return (
        process.returncode,
        usage.ru_maxrss / 1024.0,
        time.perf_counter() - started,
        usage.ru_utime + usage.ru_stime,
    )


@dataclass(frozen=True, kw_only=True)
class MemoryResult:
    n: int
    tile: int
    store_bytes: int
    write_seconds: float
    knn_seconds: float
    # user + system CPU time of the k-NN process (wall time also counts waiting on a busy machine)
    knn_cpu_seconds: float
    knn_peak_rss_mib: float
    import_only_peak_rss_mib: float
    limit_mib: float
    passed: bool
    block_rows: int
    accuracy_k1: float
    hubness_reduction: str = "none"


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="rows = columns (20000)")
    parser.add_argument("--tile", type=int, default=1000, help="tile / chunk edge (1000)")
    parser.add_argument("--limit-mib", type=float, default=512.0, help="peak RSS limit (512)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the store goes")
    parser.add_argument("--keep", action="store_true", help="keep the store")
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON")
    parser.add_argument(
        "--hubness-reduction",
        choices=("none", "mp"),
        default="none",
        help="passed to nncd knn (mp: mutual proximity, a second pass over the store)",
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="nncd-knn-memory-", dir=args.dir))
    store = workdir / "synthetic.zarr"
    report = workdir / "knn.json"
    try:
        started = time.perf_counter()
        write_synthetic_store(store, n=args.n, tile=args.tile)
        write_seconds = time.perf_counter() - started
        store_bytes = directory_bytes(store)
        code, baseline_mib, _, _ = run_measured(
            [sys.executable, "-c", "from nncd_ray.cli.main import build_parser; build_parser()"]
        )
        if code != 0:
            raise SystemExit("importing the k-NN stage failed")
        code, peak_mib, knn_seconds, knn_cpu = run_measured(
            [
                sys.executable, "-m", "nncd_ray.cli.main", "knn", "--store", str(store),
                "--k", "1,3,5,7", "--json", str(report),
                "--hubness-reduction", args.hubness_reduction,
            ]
        )  # fmt: skip
        if code != 0:
            raise SystemExit(f"nncd knn exited with {code}")
        knn = json.loads(report.read_text(encoding="utf-8"))
        result = MemoryResult(
            n=args.n,
            tile=args.tile,
            store_bytes=store_bytes,
            write_seconds=write_seconds,
            knn_seconds=knn_seconds,
            knn_cpu_seconds=knn_cpu,
            knn_peak_rss_mib=peak_mib,
            import_only_peak_rss_mib=baseline_mib,
            limit_mib=args.limit_mib,
            passed=peak_mib < args.limit_mib,
            block_rows=int(knn["block_rows"]),
            accuracy_k1=float(knn["results"][0]["accuracy"]),
            hubness_reduction=args.hubness_reduction,
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"k-NN over a {args.n:,} x {args.n:,} store (tile {args.tile}, "
        f"{result.store_bytes / 2**30:.2f} GiB on disk, written in {result.write_seconds:.0f} s):\n"
        f"  peak RSS {result.knn_peak_rss_mib:.0f} MiB (limit {args.limit_mib:.0f} MiB: "
        f"{'PASS' if result.passed else 'FAIL'}); importing the stage alone "
        f"{result.import_only_peak_rss_mib:.0f} MiB\n"
        f"  {result.knn_seconds:.1f} s wall, {result.knn_cpu_seconds:.1f} s CPU for k = 1,3,5,7 "
        f"in blocks of {result.block_rows} rows, hubness reduction {args.hubness_reduction}; "
        f"accuracy k=1 {result.accuracy_k1:.3f} (chance 0.25)"
    )
    if args.keep:
        print(f"  store kept at {store}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""Matrix-engine overhead and driver memory (``shared/bench/PROTOCOL.md``, Speed), in one run.

1. Ray + storage overhead, for gzip on a protocol split (agnews-small) and for a small locally built
   LM on a corner of it: the same tiles scored (a) in-process with no store, (b) by
   ``compute_matrix(executor="local")`` (store, markers, no Ray), (c) by one Ray actor on a cluster
   that ``compute_matrix`` starts itself (cold: cluster start-up included), (d) by one actor on an
   already running cluster (warm), and (e) by two actors on it. Each worker has one CPU thread.
2. Driver peak RSS of synthetic-scorer jobs of 2,000² and 10,000² pairs, each in its own
   subprocess (``VmHWM`` of the driver only; Ray's own processes are not the driver). The
   driver keeps per-tile metadata only, so its memory must stay flat and under 1 GiB.

Run::

    python -m nncd_ray.bench.engine --data ../shared/data/agnews/test.csv --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nncd_ray.data.agnews import default_data_path
from nncd_ray.data.corpus import Corpus
from nncd_ray.data.protocols import load_protocol
from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.tile_ledger import MatrixSummary
from nncd_ray.matrix.tiling import TilePlan
from nncd_ray.scorers import ScorerSpec, make_scorer

RSS_LIMIT_MIB = 1024.0
WORDS = (
    "market", "stocks", "oil", "team", "season", "game", "launch", "probe", "space", "court",
    "vote", "storm", "energy", "chip", "league", "price", "bank", "rates", "coach", "goal",
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class EngineBenchConfig:
    """What to measure; the defaults are the reported configuration."""

    # AG News test.csv (or its folder)
    data: str
    protocol: str = "agnews-small"
    # tile edge of the gzip runs (the engine's default)
    tile: int = 64
    # the LM runs use the first lm_queries × lm_refs of the split, in tiles of lm_tile
    lm_queries: int = 48
    lm_refs: int = 48
    lm_tile: int = 24
    # the small LM built locally (GPT-2 style, random weights, BPE trained on Gutenberg)
    lm_layers: int = 2
    lm_width: int = 64
    lm_vocab: int = 512
    # driver-memory runs: n × n synthetic jobs
    rss_sizes: tuple[int, ...] = (2000, 10_000)
    rss_tile: int = 128
    rss_actors: int = 2
    skip_lm: bool = False
    # runs (a) and (b) only, no cluster: the store's own cost in seconds (and the smoke test)
    skip_ray: bool = False
    # each timing is the fastest of this many runs (the machine may be shared)
    repeats: int = 2


def pure_scoring(spec: ScorerSpec, rows: Corpus, cols: Corpus, tile: int) -> dict[str, float]:
    """Build the scorer and score every tile in this process, no store: the baseline."""
    started = time.perf_counter()
    scorer = make_scorer(spec)
    built = time.perf_counter()
    plan = TilePlan(n_rows=len(rows), n_cols=len(cols), tile=tile)
    for t in plan.tiles():
        scorer.score_tile(
            rows.texts[t.row_start : t.row_stop], cols.texts[t.col_start : t.col_stop]
        )
    done = time.perf_counter()
    return {
        "build_seconds": built - started,
        "loop_seconds": done - built,
        "wall_seconds": done - started,
    }


def engine_run(
    spec: ScorerSpec, rows: Corpus, cols: Corpus, store: Path, **options: Any
) -> MatrixSummary:
    config = MatrixConfig(store=str(store), scorer=spec, overwrite=True, progress=False, **options)
    return compute_matrix(config, rows, cols)


def _figures(summary: MatrixSummary) -> dict[str, float]:
    steady = max(summary.wall_seconds - summary.startup_seconds, 1e-9)
    return {
        "wall_seconds": summary.wall_seconds,
        "startup_seconds": summary.startup_seconds,
        "pairs_per_second": summary.pairs_per_second,
        "steady_pairs_per_second": summary.pairs_computed / steady,
        "tiles": summary.tiles_computed,
    }


@contextmanager
def single_threaded_torch(spec: ScorerSpec) -> Iterator[None]:
    """One torch thread in this process while an LM scores in-process (like a 1-CPU actor)."""
    if spec.name != "lm":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def omp_threads(cpus: float) -> str | None:
    """OMP_NUM_THREADS that Ray gives a worker with ``cpus`` CPUs (torch uses that many threads)."""
    import ray

    @ray.remote(num_cpus=cpus)
    def probe() -> str | None:
        return os.environ.get("OMP_NUM_THREADS")

    value: str | None = ray.get(probe.remote())
    return value


def overhead_suite(
    name: str,
    spec: ScorerSpec,
    rows: Corpus,
    cols: Corpus,
    *,
    tile: int,
    workdir: Path,
    repeats: int,
    ray: bool = True,
) -> dict[str, Any]:
    """Runs (a)-(e) of the module docstring for one scorer (without ``ray``: (a) and (b)), each
    the fastest of ``repeats``.

    Every worker gets one CPU thread: in-process runs set torch to one thread, actors ask for one
    CPU (Ray then sets OMP_NUM_THREADS=1). Two actors use two. On a shared, loaded machine this
    keeps multi-threaded spinning out of the comparison.
    """
    from nncd_ray.matrix.cluster.executor import RayExecutor

    def best(store: str, **options: Any) -> dict[str, float]:
        runs = [
            _figures(engine_run(spec, rows, cols, workdir / f"{name}-{store}.zarr", **options))
            for _ in range(repeats)
        ]
        return min(runs, key=lambda fig: fig["wall_seconds"])

    with single_threaded_torch(spec):
        pure = min(
            (pure_scoring(spec, rows, cols, tile) for _ in range(repeats)),
            key=lambda fig: fig["wall_seconds"],
        )
        local = best("local", executor="local", tile=tile)
    base = pure["wall_seconds"]
    suite: dict[str, Any] = {
        "scorer": {"name": spec.name, "options": dict(spec.options)},
        "pairs": len(rows) * len(cols),
        "tile": tile,
        "tiles": TilePlan(n_rows=len(rows), n_cols=len(cols), tile=tile).n_tiles,
        "in_process": pure,
        "local_executor": local,
        "repeats": repeats,
        # store + markers, no Ray
        "overhead": {"local_vs_in_process": local["wall_seconds"] / base - 1},
    }
    if not ray:
        return suite
    cold = best("cold", tile=tile)
    with RayExecutor(MatrixConfig(store="", scorer=spec), rows, cols):  # a cluster to join
        warm1 = best("w1", tile=tile)
        warm2 = best("w2", tile=tile, actors=2)
        threads = omp_threads(1.0)
    return {
        **suite,
        "ray_1_actor_cold": cold,
        "ray_1_actor_warm": warm1,
        "ray_2_actors_warm": warm2,
        "omp_threads_per_actor": threads,
        "overhead": {
            **suite["overhead"],
            # whole call, cluster start-up included
            "ray_cold_vs_in_process": cold["wall_seconds"] / base - 1,
            # cluster already running (actor start and scorer build still included)
            "ray_warm_vs_in_process": warm1["wall_seconds"] / base - 1,
            # tile loop only: after the first actor is ready vs the in-process loop
            "ray_steady_vs_in_process_loop": (warm1["wall_seconds"] - warm1["startup_seconds"])
            / max(pure["loop_seconds"], 1e-9)
            - 1,
        },
    }


def synthetic_corpus(n: int, tag: str) -> Corpus:
    """``n`` distinct ~120-byte documents of shared words, for the memory runs."""
    texts = [
        f"{tag}{i} " + " ".join(WORDS[(i * 7 + k * 5) % len(WORDS)] for k in range(8 + i % 9))
        for i in range(n)
    ]
    return Corpus.from_texts(texts, labels=[i % 4 for i in range(n)])


def memory_status_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from ``/proc/self/status``, in bytes.

    Not ``ru_maxrss``: after fork + exec Linux carries the parent's peak into the child's
    ``ru_maxrss``, so a child started by a big parent would report the parent's size.
    """
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_child(n: int, tile: int, actors: int, store: str) -> dict[str, Any]:
    """Inside the subprocess: one n × n synthetic job on a cold private cluster."""
    rows, cols = synthetic_corpus(n, "q"), synthetic_corpus(n, "r")
    before = memory_status_bytes("VmRSS")
    config = MatrixConfig(
        store=store,
        scorer=ScorerSpec(name="synthetic", options={}),
        tile=tile,
        actors=actors,
        overwrite=True,
        progress=False,
    )
    summary = compute_matrix(config, rows, cols)
    peak = memory_status_bytes("VmHWM")
    return {
        "n": n,
        "pairs": n * n,
        "tile": tile,
        "tiles": summary.tiles_computed,
        "actors": actors,
        "rss_before_job_mib": before / 2**20,
        "peak_rss_mib": peak / 2**20,
        "wall_seconds": summary.wall_seconds,
        "pairs_per_second": summary.pairs_per_second,
    }


def measure_rss(n: int, config: EngineBenchConfig, workdir: Path) -> dict[str, Any]:
    store = workdir / f"rss-{n}.zarr"
    out = workdir / f"rss-{n}.json"
    command = [
        sys.executable, "-m", "nncd_ray.bench.engine", "--rss-child", str(n),
        "--rss-tile", str(config.rss_tile), "--rss-actors", str(config.rss_actors),
        "--rss-store", str(store), "--json", str(out),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    result["store_bytes"] = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    shutil.rmtree(store, ignore_errors=True)
    return result


def lm_model(config: EngineBenchConfig, workdir: Path) -> Path:
    from nncd_ray.testing.tiny_models import build_tiny_model, read_text_lines

    data = Path(config.data).expanduser().resolve()
    books = (data if data.is_dir() else data.parent).parent / "gutenberg"
    lines = read_text_lines(sorted(books.glob("*.txt")), 2000)
    return build_tiny_model(
        workdir / "model",
        arch="gpt2",
        vocab_size=config.lm_vocab,
        n_layer=config.lm_layers,
        n_embd=config.lm_width,
        n_head=4,
        n_positions=512,
        tokenizer_texts=lines,
    )


def run(config: EngineBenchConfig) -> dict[str, Any]:
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="nncd-bench-engine-"))
    try:
        split = load_protocol(config.protocol, config.data)
        if split.refs is None:
            raise SystemExit(f"{config.protocol} is square; use a rectangular protocol")
        queries, refs = split.queries, split.refs
        result: dict[str, Any] = {
            "protocol": config.protocol,
            "config": asdict(config),
            "cores": os.cpu_count(),
            "load_average_start": os.getloadavg(),
        }
        result["gzip"] = overhead_suite(
            "gzip",
            ScorerSpec(name="gzip", options={}),
            queries,
            refs,
            tile=config.tile,
            workdir=workdir,
            repeats=config.repeats,
            ray=not config.skip_ray,
        )
        if not config.skip_lm:
            model = lm_model(config, workdir)
            spec = ScorerSpec(name="lm", options={"model": str(model), "device": "cpu"})
            rows = queries.subset(range(config.lm_queries))
            cols = refs.subset(range(config.lm_refs))
            result["lm"] = overhead_suite(
                "lm",
                spec,
                rows,
                cols,
                tile=config.lm_tile,
                workdir=workdir,
                repeats=config.repeats,
                ray=not config.skip_ray,
            )
            result["lm"]["model"] = {
                "layers": config.lm_layers, "width": config.lm_width, "vocab": config.lm_vocab,
            }  # fmt: skip
        result["driver_memory"] = [measure_rss(n, config, workdir) for n in config.rss_sizes]
        peaks = [r["peak_rss_mib"] for r in result["driver_memory"]]
        result["driver_memory_ok"] = all(peak < RSS_LIMIT_MIB for peak in peaks)
        result["load_average_end"] = os.getloadavg()
        result["wall_seconds"] = time.perf_counter() - started
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _percent(value: float) -> str:
    return f"{100 * value:+.0f}%"


def format_table(result: dict[str, Any]) -> str:
    lines = [f"engine benchmark, protocol {result['protocol']}, {result['cores']} cores, "
             f"load average {result['load_average_start'][0]:.1f} at start"]  # fmt: skip
    for key in ("gzip", "lm"):
        if key not in result:
            continue
        suite = result[key]
        pure = suite["in_process"]
        lines += [
            "",
            f"{key}: {suite['pairs']:,} pairs, tile {suite['tile']} ({suite['tiles']} tiles), "
            f"fastest of {suite['repeats']} runs each",
            f"{'run':<28}{'wall s':>9}{'start-up s':>12}{'pairs/s':>10}{'steady pairs/s':>16}",
            f"{'in-process, no store':<28}{pure['wall_seconds']:>9.2f}"
            f"{pure['build_seconds']:>12.2f}"
            f"{suite['pairs'] / pure['wall_seconds']:>10.0f}"
            f"{suite['pairs'] / max(pure['loop_seconds'], 1e-9):>16.0f}",
        ]
        for label, name in (
            ("local executor (store)", "local_executor"),
            ("ray 1 actor, cold cluster", "ray_1_actor_cold"),
            ("ray 1 actor, warm cluster", "ray_1_actor_warm"),
            ("ray 2 actors, warm cluster", "ray_2_actors_warm"),
        ):
            if name not in suite:
                continue
            fig = suite[name]
            lines.append(
                f"{label:<28}{fig['wall_seconds']:>9.2f}{fig['startup_seconds']:>12.2f}"
                f"{fig['pairs_per_second']:>10.0f}{fig['steady_pairs_per_second']:>16.0f}"
            )
        over = suite["overhead"]
        if "ray_cold_vs_in_process" not in over:
            lines.append(
                f"overhead vs in-process: store only {_percent(over['local_vs_in_process'])}"
            )
            continue
        lines.append(
            f"overhead vs in-process: store only {_percent(over['local_vs_in_process'])}; "
            f"Ray+store with cluster start-up {_percent(over['ray_cold_vs_in_process'])}, "
            f"without {_percent(over['ray_warm_vs_in_process'])}, tile loop only "
            f"{_percent(over['ray_steady_vs_in_process_loop'])} "
            f"(OMP_NUM_THREADS per actor: {suite['omp_threads_per_actor']})"
        )
    lines += ["", "driver peak RSS (synthetic scorer, subprocess per size):"]
    for r in result["driver_memory"]:
        lines.append(
            f"  {r['n']:>6,}² = {r['pairs']:>11,} pairs, tile {r['tile']} ({r['tiles']:,} tiles), "
            f"{r['actors']} actors: peak {r['peak_rss_mib']:.0f} MiB (before the job "
            f"{r['rss_before_job_mib']:.0f} MiB), {r['wall_seconds']:.1f} s, "
            f"{r['pairs_per_second']:,.0f} pairs/s, store {r['store_bytes'] / 2**20:.1f} MiB"
        )
    lines.append(
        f"driver memory flat and < {RSS_LIMIT_MIB:.0f} MiB: {result['driver_memory_ok']}; "
        f"bench wall {result['wall_seconds']:.0f} s, load average at end "
        f"{result['load_average_end'][0]:.1f}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nncd_ray.bench.engine", description=__doc__.splitlines()[0]
    )
    defaults = EngineBenchConfig(data="")
    parser.add_argument("--data", help="AG News test.csv (default: $NNCD_AGNEWS or ../shared/…)")
    parser.add_argument("--protocol", default=defaults.protocol)
    parser.add_argument("--tile", type=int, default=defaults.tile)
    parser.add_argument("--lm-queries", type=int, default=defaults.lm_queries)
    parser.add_argument("--lm-refs", type=int, default=defaults.lm_refs)
    parser.add_argument("--lm-tile", type=int, default=defaults.lm_tile)
    parser.add_argument("--skip-lm", action="store_true")
    parser.add_argument(
        "--skip-ray", action="store_true", help="in-process and local executor only (no cluster)"
    )
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="fastest of N runs")
    parser.add_argument(
        "--rss-sizes", default=",".join(map(str, defaults.rss_sizes)), help="n of each n×n job"
    )
    parser.add_argument("--rss-tile", type=int, default=defaults.rss_tile)
    parser.add_argument("--rss-actors", type=int, default=defaults.rss_actors)
    parser.add_argument("--json", type=Path, help="write the figures here")
    # internal: one driver-memory run, in its own process
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rss-store", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.rss_child:
        figures = rss_child(args.rss_child, args.rss_tile, args.rss_actors, args.rss_store)
        args.json.write_text(json.dumps(figures, indent=2))
        return 0
    data = args.data or default_data_path()
    if data is None:
        parser.error("--data is required (AG News test.csv)")
    config = EngineBenchConfig(
        data=str(data),
        protocol=args.protocol,
        tile=args.tile,
        lm_queries=args.lm_queries,
        lm_refs=args.lm_refs,
        lm_tile=args.lm_tile,
        skip_lm=args.skip_lm,
        skip_ray=args.skip_ray,
        repeats=args.repeats,
        rss_sizes=tuple(int(n) for n in args.rss_sizes.split(",") if n),
        rss_tile=args.rss_tile,
        rss_actors=args.rss_actors,
    )
    result = run(config)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))
    return 0 if result["driver_memory_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

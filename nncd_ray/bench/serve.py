"""Load benchmark of ``nncd serve``: N concurrent clients for a fixed time, with and without
request batching, on loopback only.

    python -m nncd_ray.bench.serve --data ../shared/data/agnews/test.csv --clients 8 --duration 60
    python -m nncd_ray.bench.serve --data DATA/agnews/test.csv --device cuda --shape gpt2-small
    python -m nncd_ray.bench.serve --data DATA/agnews/test.csv --device cuda --model PATH

The service holds the agnews-small references (100, ``shared/bench/PROTOCOL.md``) and answers
``POST /classify`` for one agnews-small query per request (the 200 queries in turn). For each
mode the application is deployed on a private local Ray cluster (``batched``: the service's
default, queries of concurrent callers scored together up to ``--max-batch``, auto by default;
``unbatched``: ``--max-batch 1``, every query a tile of its own), warmed up for ``--warmup``
seconds, then ``--clients`` threads each send one request after another (keep-alive
connections) for ``--duration`` seconds. Reported per mode: requests answered, failures,
requests/s, query-reference pairs/s, latency percentiles (p50, p95, p99: ms, from send to the
whole answer read) and the mean batch the queries were scored in (the service's ``/metrics``).
Requests sent before the deadline are all waited for; the rates divide by the time until the
last answer. ``--url`` measures a service already running instead (one mode, as it is
served). The target must be this machine (127.0.0.1, localhost, ::1): this is no load tester
for other people's services.

Models: ``--model PATH`` (default: the embedded model) or ``--shape gpt2-small`` /
``llama-1.2b``: the GPU shapes of ``python -m nncd_ray.bench.gpu`` built here with random
weights (no download). Writes ``--json`` and prints a Markdown table (the README's).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nncd_ray.bench.machine import machine_info
from nncd_ray.data.protocols import load_protocol
from nncd_ray.errors import ConfigError, NNCDError
from nncd_ray.scorers import ScorerSpec
from nncd_ray.serve.config import ServeConfig
from nncd_ray.serve.metrics import latency_summary

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# bounds of one run: this is a benchmark, not a load generator
MAX_CLIENTS = 256
MAX_DURATION_S = 600.0
MODES = ("batched", "unbatched")


@dataclass(frozen=True, kw_only=True)
class Load:
    """How hard and how long to press on the service."""

    # concurrent clients, each with one request in flight at a time
    clients: int = 8
    # seconds measured, and seconds of the same load before (not counted)
    duration_s: float = 60.0
    warmup_s: float = 10.0
    # seconds one request may take before it counts as failed
    timeout_s: float = 300.0


def _checked_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK:
        raise ConfigError(
            f"the benchmark only presses on a service on this machine (http://127.0.0.1:PORT), "
            f"not {url!r}"
        )
    return parts


def run_load(
    url: str, texts: Sequence[str], load: Load, *, token: str | None = None, n_refs: int
) -> dict[str, Any]:
    """``load.clients`` threads send ``POST /classify`` (one of ``texts`` each, in turn) for
    ``load.duration_s`` seconds; returns counts, rates and latency percentiles (ms)."""
    if not 1 <= load.clients <= MAX_CLIENTS or not 0 < load.duration_s <= MAX_DURATION_S:
        raise ConfigError(
            f"clients must be 1 to {MAX_CLIENTS} and the duration 0 to {MAX_DURATION_S:g} s"
        )
    parts = _checked_url(url)
    path = (parts.path.rstrip("/") or "") + "/classify"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    finished: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + load.duration_s

    def client(number: int) -> None:
        connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=load.timeout_s
        )
        sent = 0
        while time.perf_counter() < deadline:
            text = texts[(number + sent * load.clients) % len(texts)]
            body = json.dumps({"text": text}).encode("utf-8")
            began = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status = str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                connection.close()
            ended = time.perf_counter()
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == "200":
                    latencies.append(ended - began)
            sent += 1
        connection.close()
        with lock:
            finished.append(time.perf_counter())

    threads = [threading.Thread(target=client, args=(n,)) for n in range(load.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = max(finished) - start
    answered = len(latencies)
    return {
        "clients": load.clients,
        "duration_s": load.duration_s,
        "elapsed_s": round(elapsed, 3),
        "requests": sum(statuses.values()),
        "answered": answered,
        "failed": sum(statuses.values()) - answered,
        "statuses": dict(sorted(statuses.items())),
        "requests_per_s": round(answered / elapsed, 3),
        "pairs_per_s": round(answered * n_refs / elapsed, 1),
        "latency_ms": latency_summary(latencies),
    }


def measure(
    url: str, texts: Sequence[str], load: Load, *, token: str | None, n_refs: int
) -> dict[str, Any]:
    """Warm-up, then the measured load; with the service's own view of its batches."""
    from nncd_ray.serve.client import ServiceClient

    _checked_url(url)
    service = ServiceClient(url, token=token or "")
    if load.warmup_s > 0:
        run_load(url, texts, replace(load, duration_s=load.warmup_s), token=token, n_refs=n_refs)
    before = service.metrics()
    result = run_load(url, texts, load, token=token, n_refs=n_refs)
    after = service.metrics()
    result["service"] = {
        # over the service's recent window (4,096 queries), the warm-up's included
        "mean_queries_per_batch": after.get("mean_queries_per_batch"),
        "retries": after.get("retries", 0) - before.get("retries", 0),
        "max_batch": service.health().get("max_batch"),
    }
    return result


def _model_spec(args: argparse.Namespace, work: Path) -> tuple[ScorerSpec, str]:
    options: dict[str, Any] = {"device": args.device}
    if args.dtype:
        options["dtype"] = args.dtype
    if args.token_budget:
        options["token_budget"] = args.token_budget
    if args.shape:
        from nncd_ray.bench.gpu import GPUBenchConfig, build_models, quick_config

        config = GPUBenchConfig(
            data=args.data,
            gutenberg=args.gutenberg,
            device="cpu" if args.device == "cpu" else "cuda",
            dtype="bf16" if args.dtype in (None, "bf16") and args.device != "cpu" else "fp32",
            shapes=(args.shape,),
        )
        if args.quick:
            config = quick_config(config)
        model = build_models(config, work)[args.shape]
        return ScorerSpec(name="lm", options={**options, "model": str(model)}), args.shape
    if args.model:
        options["model"] = args.model
    return ScorerSpec(name="lm", options=options), args.model or "embedded"


def run_modes(args: argparse.Namespace, load: Load) -> dict[str, Any]:
    """Each mode on one private cluster, the application redeployed between them."""
    from nncd_ray.matrix.cluster.private_cluster import PrivateCluster
    from nncd_ray.serve.app import deploy, local_url, wait_until_serving

    split = load_protocol("agnews-small", args.data)
    assert split.refs is not None  # agnews-small is rectangular
    refs = split.refs.subset(range(args.refs)) if args.refs else split.refs
    texts = list(split.queries.texts)
    results: dict[str, Any] = {"references": len(refs), "modes": {}}
    with tempfile.TemporaryDirectory(prefix="nncd-bench-serve-") as work:
        spec, model = _model_spec(args, Path(work))
        results["model"] = model
        base = ServeConfig(
            scorer=spec,
            replicas=args.replicas,
            cpus_per_replica=args.cpus_per_replica,
            gpus_per_replica=1.0 if args.device == "cuda" else 0.0,
            port=args.port,
            max_texts=1,
        )
        cpus = max(1, int(args.replicas * args.cpus_per_replica))
        with PrivateCluster(num_cpus=cpus, log_to_driver=False):
            for mode in args.modes:
                config = replace(base, max_batch=1 if mode == "unbatched" else args.max_batch)
                deploy(config, refs)
                url = local_url(config)
                wait_until_serving(url)
                print(
                    f"bench.serve: {mode}: {load.clients} clients for {load.duration_s:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                results["modes"][mode] = measure(url, texts, load, token=None, n_refs=len(refs))
    return results


def markdown(results: dict[str, Any]) -> str:
    """The README's table: one row per mode."""
    lines = [
        "| mode | max batch | clients | s | answered | failed | requests/s | pairs/s | p50 ms "
        "| p95 ms | p99 ms | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, run in results["modes"].items():
        latency, service = run["latency_ms"], run["service"]
        lines.append(
            f"| {mode} | {service['max_batch']} | {run['clients']} | {run['elapsed_s']:.1f} "
            f"| {run['answered']} | {run['failed']} | {run['requests_per_s']:.2f} "
            f"| {run['pairs_per_s']:,.0f} | {_ms(latency['p50'])} | {_ms(latency['p95'])} "
            f"| {_ms(latency['p99'])} | {service['mean_queries_per_batch']} |"
        )
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nncd_ray.bench.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", help="AG News test.csv (the agnews-small queries and refs)")
    parser.add_argument("--gutenberg", help="Gutenberg .txt folder (tokenizer of --shape)")
    parser.add_argument("--url", help="measure this running service (loopback only) instead")
    parser.add_argument("--token-file", help="with --url: the service's token")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured (60)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before (10)")
    parser.add_argument("--modes", default=",".join(MODES), help="batched,unbatched")
    parser.add_argument("--max-batch", type=int, help="batched mode's batch (default: auto)")
    parser.add_argument("--replicas", type=int, default=1, help="scorer replicas (1)")
    parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--refs", type=int, help="first N agnews-small references only")
    parser.add_argument("--model", help="model directory (default: the embedded model)")
    parser.add_argument("--shape", choices=("gpt2-small", "llama-1.2b"), help="bench.gpu shape")
    parser.add_argument("--quick", action="store_true", help="with --shape: its tiny stand-in")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--token-budget", type=int, help="tokens per forward pass")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port on 127.0.0.1 (8000)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    load = Load(clients=args.clients, duration_s=args.duration, warmup_s=args.warmup)
    try:
        if set(args.modes) - set(MODES):
            raise ConfigError(f"--modes takes {', '.join(MODES)}, not {args.modes}")
        if args.model and args.shape:
            raise ConfigError("give --model or --shape, not both")
        started = time.time()
        if args.url:
            from nncd_ray.serve.auth import find_token

            _checked_url(args.url)  # before anything is sent there

            token = find_token(args.token_file)[0]
            n_refs = len(_references(args.url, token))
            texts = _queries(args)
            served = measure(args.url, texts, load, token=token, n_refs=n_refs)
            results: dict[str, Any] = {
                "references": n_refs,
                "model": "as served",
                "modes": {"as served": served},
            }
        else:
            if not args.data:
                raise ConfigError("--data (AG News test.csv) is needed to start a service")
            results = run_modes(args, load)
    except NNCDError as exc:
        print(f"python -m nncd_ray.bench.serve: error: {exc}", file=sys.stderr)
        return 2
    results["machine"] = machine_info()
    results["wall_s"] = round(time.time() - started, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(markdown(results))
    return 0


def _references(url: str, token: str | None) -> list[str]:
    from nncd_ray.serve.client import ServiceClient

    ids: list[str] = ServiceClient(url, token=token or "").references()["ids"]
    return ids


def _queries(args: argparse.Namespace) -> list[str]:
    if args.data:
        return list(load_protocol("agnews-small", args.data).queries.texts)
    return [f"news item {n}: markets, teams, launches and elections" for n in range(50)]


if __name__ == "__main__":
    raise SystemExit(main())

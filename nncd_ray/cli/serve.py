"""``nncd serve``: NCD k-NN as an online service on Ray Serve.

    nncd serve --protocol agnews-small --model ./my-model --replicas 2 --token-file token
    nncd serve --refs refs.csv --text-columns 2,3 --label-column 1 --no-header --no-auth

Each scorer replica holds the compressor (the language model, on a GPU of its own where the
cluster has them) and the references, with C(y) of every reference computed at start, or read
from ``--store`` (a matrix store of the same references and compressor: checked). Endpoints:
``POST /classify`` and ``POST /distances`` (``{"text": "..."}`` or a list), ``GET /health``,
``GET /metrics``, ``GET /references``. Requests of concurrent callers are scored together.
Every request but ``GET /health`` needs ``Authorization: Bearer <token>``, the token from
``--token-file`` or ``$NNCD_SERVE_TOKEN`` (``--no-auth`` turns that off). Runs until Ctrl-C or
SIGTERM; without ``--address`` (or ``$RAY_ADDRESS``) on a private local Ray cluster that ends
with it. ``nncd classify`` is its command-line client.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from nncd_ray.cli.common import (
    add_reading_arguments,
    add_scorer_arguments,
    announce,
    corpus_from_args,
    parse_options,
    positive_int,
    scorer_spec_from_args,
)
from nncd_ray.data.agnews import agnews_path
from nncd_ray.data.protocols import PROTOCOLS, load_protocol
from nncd_ray.errors import ConfigError
from nncd_ray.matrix.cluster.gpu_assignment import AUTO, GpuRequest, parse_gpus_per_actor
from nncd_ray.ncd import VARIANTS
from nncd_ray.scorers import ScorerSpec
from nncd_ray.serve.auth import server_token_digest
from nncd_ray.serve.config import ServeConfig

if TYPE_CHECKING:
    from ray.serve import Application

    from nncd_ray.data.corpus import Corpus


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="NCD k-NN classification as an online service (Ray Serve, HTTP)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(parser)
    return parser


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of ``nncd serve`` (also parsed by :func:`app_builder` for a RayService)."""
    refs = parser.add_argument_group("references")
    refs.add_argument("--refs", metavar="PATH", help="the labelled reference documents")
    refs.add_argument(
        "--protocol",
        metavar="NAME",
        choices=sorted(PROTOCOLS),
        help="serve the references of a benchmark split of AG News (read from --data)",
    )
    add_reading_arguments(refs)
    parser.add_argument(
        "--store",
        metavar="PATH|URL",
        help="a matrix store of these references and this compressor: C(y) is read from it "
        "(its fingerprint checked) instead of computed at start",
    )
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option of a remote store, repeatable",
    )
    service = parser.add_argument_group("service")
    service.add_argument("--k", type=positive_int, default=1, metavar="K", help="neighbours (1)")
    service.add_argument("--variant", choices=VARIANTS, default="ncd", help="NCD variant (ncd)")
    service.add_argument(
        "--replicas", type=positive_int, default=1, metavar="N", help="scorer replicas (1)"
    )
    service.add_argument(
        "--gpus-per-replica",
        type=_gpus,
        default=AUTO,
        metavar="G|auto",
        help="GPUs per scorer replica (auto: 1 for --compressor lm when the cluster has GPUs)",
    )
    service.add_argument(
        "--cpus-per-replica", type=float, default=1.0, metavar="C", help="CPUs per replica (1)"
    )
    service.add_argument(
        "--max-batch",
        type=positive_int,
        metavar="N",
        help="queries scored together by a replica, gathered across callers (default: enough "
        "to fill the LM's token budget, 8 to 64; 1 turns request batching off)",
    )
    service.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        metavar="MS",
        help="how long a batch waits for more queries once its first arrived (10)",
    )
    service.add_argument(
        "--max-texts", type=positive_int, default=256, metavar="N", help="documents per request"
    )
    service.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=8 << 20,
        metavar="N",
        help="largest request body (8 MiB; larger ones are answered 413)",
    )
    service.add_argument("--host", default="127.0.0.1", help="HTTP host (127.0.0.1)")
    service.add_argument("--port", type=int, default=8000, help="HTTP port (8000)")
    service.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join (default: $RAY_ADDRESS, else a private local cluster)",
    )
    service.add_argument(
        "--start-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds to wait for the replicas to start (600)",
    )
    auth = service.add_mutually_exclusive_group()
    auth.add_argument(
        "--token-file",
        metavar="PATH",
        help="the bearer token clients must send (default: $NNCD_SERVE_TOKEN, else the file "
        "$NNCD_SERVE_TOKEN_PATH)",
    )
    auth.add_argument("--no-auth", action="store_true", help="serve without authentication")
    add_scorer_arguments(parser)


def _gpus(text: str) -> GpuRequest:
    try:
        return parse_gpus_per_actor(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def references_from_args(args: argparse.Namespace) -> Corpus:
    """The references: ``--refs PATH`` read with the reading options, or ``--protocol``'s."""
    if args.protocol:
        if args.refs:
            raise ConfigError("--protocol brings its own references; drop --refs")
        split = load_protocol(args.protocol, agnews_path(args.data, announce=announce))
        return split.refs if split.refs is not None else split.queries
    if args.data:
        raise ConfigError("--data goes with --protocol; use --refs for a file")
    if not args.refs:
        raise ConfigError("no references: give --refs PATH or --protocol NAME")
    references = corpus_from_args(args, args.refs)
    if references.labels is None:
        raise ConfigError(
            f"the references in {args.refs} have no labels; name their column with --label-column"
        )
    return references


def local_scorer_spec(spec: ScorerSpec) -> ScorerSpec:
    """``spec`` with a local model directory checked (one line if it does not exist) and made
    absolute, so replicas find it whatever their working directory (this machine's paths)."""
    model = spec.options.get("model")
    if spec.name != "lm" or model is None:
        return spec
    from nncd_ray.scorers.lm.loading import resolve_model_source

    source, local = resolve_model_source(str(model))
    if not local or model == "embedded":
        return spec
    return ScorerSpec(name=spec.name, options={**spec.options, "model": source})


def config_from_args(args: argparse.Namespace, *, token_sha256: str | None) -> ServeConfig:
    config = ServeConfig(
        scorer=scorer_spec_from_args(args),
        variant=args.variant,
        k=args.k,
        replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
        max_batch=args.max_batch,
        batch_wait_s=args.batch_wait_ms / 1000.0,
        store=args.store,
        storage_options=parse_options(args.storage_option, "--storage-option") or None,
        token_sha256=token_sha256,
        max_texts=args.max_texts,
        max_body_bytes=args.max_body_bytes,
        host=args.host,
        port=args.port,
    )
    config.validate()
    return config


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the service as Ctrl-C does (the application is deleted, the cluster ends)."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from nncd_ray.serve.app import deploy, local_url, ray_cluster, stop_service, wait_until_serving
    from nncd_ray.serve.references import check_store_references

    digest = server_token_digest(args.token_file, no_auth=args.no_auth)
    config = config_from_args(args, token_sha256=digest)
    references = references_from_args(args)
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        # a private cluster on this machine: this machine's paths are the replicas' paths
        config = dataclasses.replace(config, scorer=local_scorer_spec(config.scorer))
    if config.store is not None:
        check_store_references(
            config.store,
            references,
            compressor=config.scorer.name,
            storage_options=config.storage_options,
        )
    try:
        cpus = config.replicas * config.cpus_per_replica
        with ray_cluster(args.address, num_cpus=cpus) as logs:
            # after ray.init, whose own SIGTERM handler would end the process on the spot
            signal.signal(signal.SIGTERM, _interrupt)
            announce(f"starting {config.replicas} scorer replica(s), {len(references)} references")
            started = deploy(config, references, timeout_s=args.start_timeout)
            try:
                url = local_url(config)
                health = wait_until_serving(url)
                print(_ready_line(config, url, started["gpus_per_replica"], health), flush=True)
                if logs is not None:
                    announce(f"the replicas' and Serve's logs: {logs}")
                while True:
                    time.sleep(3600)
            finally:
                if logs is None:  # a joined cluster; a private one ends with everything on it
                    stop_service(config)
    except KeyboardInterrupt:
        print("nncd serve: stopped", file=sys.stderr, flush=True)
    return 0


def _ready_line(config: ServeConfig, url: str, gpus: float, health: dict[str, Any]) -> str:
    auth = "token required" if config.token_sha256 else "no authentication"
    return (
        f"nncd serve: {url} ready: {health.get('references')} references, "
        f"{config.replicas} replica(s) of {gpus:g} GPU on {health.get('device')}, "
        f"batches of up to {health.get('max_batch')} queries, {auth}; Ctrl-C stops"
    )


def app_builder(args: dict[str, Any]) -> Application:
    """A Ray Serve application builder for a RayService (``import_path:
    nncd_ray.cli.serve:app_builder``): ``args["command"]`` holds ``nncd serve`` options, for
    example ``--refs s3://b/refs.csv --model gpt2 --replicas 4 --gpus-per-replica 1``. The HTTP
    host and port are the RayService's (``--host``/``--port`` are refused here); the token comes
    from ``--token-file`` or ``$NNCD_SERVE_TOKEN`` as for ``nncd serve``."""
    from nncd_ray.serve.app import build_application, gpus_for

    parser = argparse.ArgumentParser(prog="nncd serve (RayService)", add_help=False)
    add_serve_arguments(parser)
    command = args.get("command", "")
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    for flag in ("--host", "--port", "--address"):
        if any(word == flag or word.startswith(f"{flag}=") for word in argv):
            raise ConfigError(f"{flag} is the RayService's to set, not the application's")
    parsed = parser.parse_args(argv)
    digest = server_token_digest(parsed.token_file, no_auth=parsed.no_auth)
    config = config_from_args(parsed, token_sha256=digest)
    references = references_from_args(parsed)
    return build_application(config, references, gpus_per_replica=gpus_for(config))

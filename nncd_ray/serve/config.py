"""What a service is run with, besides its reference documents: :class:`ServeConfig`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nncd_ray.errors import ConfigError
from nncd_ray.matrix.cluster.gpu_assignment import AUTO, GpuRequest, check_gpu_request
from nncd_ray.ncd import VARIANTS
from nncd_ray.scorers import ScorerSpec

# queries one scorer replica scores together, at least and at most, when max_batch is automatic
AUTO_BATCH_MIN = 8
AUTO_BATCH_MAX = 64
# requests one scorer replica accepts at once per query it may batch (the rest wait in Serve's
# queue): enough for the next batch to gather while the current one runs
ONGOING_PER_BATCH_SLOT = 4
# the shortest bearer token accepted (characters): anything shorter is no secret
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Everything a service needs besides its references (see ``nncd serve --help``)."""

    # the compressor each scorer replica builds once, in its constructor
    scorer: ScorerSpec
    # "ncd" (C(xy), x = the query) or "ncd-min" (min(C(xy), C(yx)): a second pass per batch with
    # the references as prefixes, about twice the work)
    variant: str = "ncd"
    # neighbours voting on a label (a request may ask for another k)
    k: int = 1
    # scorer replicas (each holds the model and the references)
    replicas: int = 1
    # GPUs per scorer replica: "auto" (1 for the LM when the cluster has GPUs) or a number
    gpus_per_replica: GpuRequest = AUTO
    # CPUs per scorer replica (Ray's accounting; on CPU it is also torch's thread count)
    cpus_per_replica: float = 1.0
    # queries scored together by one replica (requests gathered across callers); None = auto:
    # enough queries to fill the LM's token budget with their pairs, from AUTO_BATCH_MIN to
    # AUTO_BATCH_MAX; 1 turns request batching off
    max_batch: int | None = None
    # seconds a batch waits for more queries once its first one arrived
    batch_wait_s: float = 0.01
    # a matrix store of these references and this compressor to read C(y) from (else computed)
    store: str | None = None
    # fsspec options of a remote store
    storage_options: Mapping[str, Any] | None = None
    # sha256 (hex) of the bearer token every request but GET /health must carry; None = no
    # authentication (only with --no-auth). The token itself never enters the cluster's state.
    token_sha256: str | None = None
    # limits of one request: documents, and bytes of its body
    max_texts: int = 256
    max_body_bytes: int = 8 << 20
    # tries of one request across scorer replicas that die under it
    attempts: int = 3
    # HTTP address of Serve's proxy, and the application's name and route
    host: str = "127.0.0.1"
    port: int = 8000
    app_name: str = "nncd"
    route_prefix: str = "/"

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an option no service could run with."""
        if self.variant not in VARIANTS:
            raise ConfigError(
                f"unknown NCD variant {self.variant!r}; choose one of: {', '.join(VARIANTS)}"
            )
        for name, value in (
            ("--k", self.k),
            ("--replicas", self.replicas),
            ("--max-texts", self.max_texts),
            ("--max-body-bytes", self.max_body_bytes),
            ("--attempts", self.attempts),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        if self.max_batch is not None and (
            isinstance(self.max_batch, bool)
            or not isinstance(self.max_batch, int)
            or self.max_batch < 1
        ):
            raise ConfigError(f"--max-batch must be a positive integer, not {self.max_batch!r}")
        if not self.cpus_per_replica >= 0:
            raise ConfigError("--cpus-per-replica must not be negative")
        if not 0 <= self.batch_wait_s <= 10:
            raise ConfigError(f"--batch-wait-ms must be from 0 to 10000, not {self.batch_wait_s}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be from 1 to 65535, not {self.port}")
        if not self.route_prefix.startswith("/"):
            raise ConfigError(f"the route prefix must start with '/', not {self.route_prefix!r}")
        check_gpu_request(self.gpus_per_replica, self.scorer)

    def batch_size(self, token_budget: int | None, reference_tokens: int | None) -> int:
        """Queries per batch: :attr:`max_batch`, else (auto) enough queries for their pairs to
        fill ``token_budget`` when every query costs ``reference_tokens`` (the LM; the tokens of
        all references together), clamped to [AUTO_BATCH_MIN, AUTO_BATCH_MAX]."""
        if self.max_batch is not None:
            return self.max_batch
        if not token_budget or not reference_tokens:
            return AUTO_BATCH_MIN
        fill = math.ceil(token_budget / reference_tokens)
        return max(AUTO_BATCH_MIN, min(AUTO_BATCH_MAX, fill))


__all__ = ["AUTO_BATCH_MAX", "AUTO_BATCH_MIN", "MIN_TOKEN_CHARS", "ServeConfig"]

"""What a matrix job is computed with, besides its documents: :class:`MatrixConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nncd_ray.errors import ConfigError
from nncd_ray.matrix.cluster.gpu_assignment import AUTO, GpuRequest, check_gpu_request
from nncd_ray.ncd import VARIANTS
from nncd_ray.scorers import ScorerSpec

EXECUTORS = ("ray", "local")

# default tile edges (documents): on CPUs, and where the scorers run on GPUs
DEFAULT_TILE = 64
GPU_TILE = 128


@dataclass(frozen=True, kw_only=True)
class MatrixConfig:
    """Everything a matrix job needs besides its documents."""

    # where the matrix lives: a local path or an fsspec URL (s3://bucket/m.zarr)
    store: str
    # which compressor, with its options; each worker builds its own scorer from it
    scorer: ScorerSpec
    # "ncd" (C(xy), x = row) or "ncd-min" (rectangular jobs then also store C(yx))
    variant: str = "ncd"
    # tile edge in documents: the unit of work, of storage (one chunk) and of resume. None: the
    # store's own when resuming, else GPU_TILE when the scorers run on GPUs (a tile must keep a
    # GPU busy long enough to hide the host's work between tiles), DEFAULT_TILE otherwise
    tile: int | None = None
    # number of scorer actors (Ray executor)
    actors: int = 1
    # GPUs per actor: "auto" = 1 for the LM on a cluster with GPUs (or device "cuda"), else 0; or
    # a number. Ray sets CUDA_VISIBLE_DEVICES for GPU actors; actors with 0 see no GPU at all
    # (see nncd_ray.matrix.cluster.gpu_assignment)
    gpus_per_actor: GpuRequest = AUTO
    cpus_per_actor: float = 1.0
    # Ray cluster to join ("auto", "ray://…", "host:port"); None starts a private local cluster
    address: str | None = None
    # "ray" or "local" (in this process, no Ray)
    executor: str = "ray"
    # attempts per tile before it is recorded as failed (actor deaths count as attempts)
    max_attempts: int = 3
    # delete an existing store instead of resuming it
    overwrite: bool = False
    # fsspec options of the store (e.g. endpoint_url, key, secret for S3)
    storage_options: Mapping[str, Any] | None = None
    # tqdm progress bar on stderr
    progress: bool = True
    # seconds to wait for at least one actor to start before giving up with ClusterError
    actor_timeout_s: float = 600.0
    # an autoscaling cluster may have no node with the resources yet: warn and wait (up to
    # actor_timeout_s) instead of refusing at once
    wait_for_resources: bool = False
    # candidate pruning (rectangular jobs): the scorer computes C(xy) only for the M references
    # that the prefilter ranks nearest to each query (the sparse layout); None: every pair (dense)
    candidates: int | None = None
    # what ranks the references for --candidates: a name of nncd_ray.matrix.prefilter.available()
    prefilter: str = "zstd"
    # hub candidates (nncd_ray.matrix.hubs): the scorer computes hub_sample evenly spaced queries
    # against every reference, and the `hubs` references most often their nearest neighbour join
    # every query's candidates; 0: the prefilter alone chooses
    hubs: int = 0
    hub_sample: int = 10

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(
                f"unknown NCD variant {self.variant!r}; choose one of: {', '.join(VARIANTS)}"
            )
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"unknown executor {self.executor!r}; choose one of: {', '.join(EXECUTORS)}"
            )
        if self.tile is not None and self.tile < 1:
            raise ConfigError(f"--tile must be at least 1, not {self.tile}")
        if self.actors < 1:
            raise ConfigError(f"--actors must be at least 1, not {self.actors}")
        if not self.cpus_per_actor >= 0:
            raise ConfigError("--cpus-per-actor must not be negative")
        if self.executor == "ray":
            check_gpu_request(self.gpus_per_actor, self.scorer)
        if self.max_attempts < 1:
            raise ConfigError(f"--max-attempts must be at least 1, not {self.max_attempts}")
        if self.actor_timeout_s <= 0:
            raise ConfigError("actor_timeout_s must be positive")
        # the prefilter's name is checked by the sparse job before any work
        if self.candidates is not None and self.candidates < 1:
            raise ConfigError(f"--candidates must be at least 1, not {self.candidates}")
        if self.hubs < 0 or self.hub_sample < 1:
            raise ConfigError(
                f"--hubs must be at least 0 and --hub-sample at least 1, not {self.hubs} and "
                f"{self.hub_sample}"
            )
        if self.hubs and (self.candidates is None or self.hubs > self.candidates):
            raise ConfigError(
                f"--hubs {self.hubs} adds hub references to each query's --candidates M: give "
                "--candidates M of at least the number of hubs"
            )


__all__ = ["DEFAULT_TILE", "EXECUTORS", "GPU_TILE", "MatrixConfig"]

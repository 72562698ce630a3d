"""How many GPUs each scorer actor gets, and keeping GPUs away from actors that got none.

Ray schedules GPUs only for actors that ask for them (``num_gpus``), and sets
``CUDA_VISIBLE_DEVICES`` for those. Ray 2.60 no longer sets it for an actor that asked for none
(ray issue 54868): such an actor on a GPU node sees every GPU, and a language model with
``device=auto`` would run on cuda:0 outside Ray's accounting, several actors on one GPU unawares.

So ``--gpus-per-actor auto`` (the default) gives each actor **one GPU** when the compressor is the
language model, its device is ``auto`` or ``cuda``, and the cluster has GPUs (``cuda`` asks for one
even when it has none yet, so the resource check can say so, or wait for an autoscaler); otherwise
zero. An explicit number is taken as given (fractions share a GPU knowingly). An actor with zero
GPUs gets an environment that hides every GPU (``CUDA_VISIBLE_DEVICES`` empty, and Ray's own switch
``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1``, which empties the variable of every accelerator family),
so it cannot reach one; ``device=cuda`` with zero GPUs per actor is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nncd_ray.errors import ConfigError
from nncd_ray.scorers import ScorerSpec

AUTO = "auto"
# environment of an actor with no GPU: nothing visible (see the module doc)
HIDE_GPUS_ENV: Mapping[str, str] = {
    "CUDA_VISIBLE_DEVICES": "",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
}

GpuRequest = float | str


def lm_device(spec: ScorerSpec) -> str | None:
    """The LM scorer's device option (``auto`` when unset); None for other compressors."""
    if spec.name != "lm":
        return None
    return str(spec.options.get("device") or AUTO)


def parse_gpus_per_actor(text: str) -> GpuRequest:
    """``--gpus-per-actor``: ``auto`` or a number of GPUs >= 0 (fractions allowed)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is neither 'auto' nor a number of GPUs") from None
    return value


def check_gpu_request(requested: GpuRequest, spec: ScorerSpec) -> None:
    """Refuse what no cluster could run correctly (raises ConfigError)."""
    if isinstance(requested, str):
        if requested != AUTO:
            raise ConfigError(f"gpus_per_actor must be 'auto' or a number, not {requested!r}")
        return
    if not requested >= 0:  # also NaN
        raise ConfigError(f"--gpus-per-actor must not be negative, not {requested:g}")
    if requested == 0 and lm_device(spec) == "cuda":
        raise ConfigError(
            "--device cuda with --gpus-per-actor 0: an actor without a GPU of its own cannot use "
            "one; leave --gpus-per-actor at auto (1 GPU per actor) or give a number above 0"
        )


def resolve_gpus_per_actor(requested: GpuRequest, spec: ScorerSpec, cluster_gpus: float) -> float:
    """GPUs per actor for ``requested`` (``auto`` or a number) on a cluster with ``cluster_gpus``
    GPUs in all (alive nodes)."""
    check_gpu_request(requested, spec)
    if not isinstance(requested, str):
        return float(requested)
    device = lm_device(spec)
    if device == "cuda" or (device == AUTO and cluster_gpus > 0):
        return 1.0
    return 0.0


def actor_runtime_env(gpus_per_actor: float) -> dict[str, Any] | None:
    """The ``runtime_env`` of a scorer actor: GPUs hidden when it has none, else Ray's own."""
    if gpus_per_actor > 0:
        return None  # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned
    return {"env_vars": dict(HIDE_GPUS_ENV)}


__all__ = [
    "AUTO",
    "HIDE_GPUS_ENV",
    "GpuRequest",
    "actor_runtime_env",
    "check_gpu_request",
    "lm_device",
    "parse_gpus_per_actor",
    "resolve_gpus_per_actor",
]

"""Device and dtype choice in one place: ``auto | cpu | cuda``, never ``cuda:N``.

On a Ray GPU actor, Ray sets ``CUDA_VISIBLE_DEVICES`` so plain ``cuda`` is the actor's own GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from nncd_ray.errors import ConfigError

if TYPE_CHECKING:
    import torch

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "fp32", "bf16", "fp16"]

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

# The SDPA kernels forward passes may use on CUDA, in torch's order of preference; None: torch's
# own choice. cuDNN attention is left out: torch 2.11 prefers it on Hopper for masked attention,
# and it builds an execution plan for every new (batch, query, key) shape, while nearly every pass
# of a tile has a shape of its own. Measured by ``bench.gpu_profile`` on an H100 (GPT-2-small
# shape, agnews-small, bf16): the cached path's tiles took 5.6 s with their shapes new to cuDNN
# and 1.7 s when run again.
CUDA_ATTENTION_KERNELS: tuple[str, ...] | None = (
    "FLASH_ATTENTION",
    "EFFICIENT_ATTENTION",
    "MATH",
)
DTYPES: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else CPU; ``cuda`` without a GPU is an error."""
    import torch

    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA GPU here")
    return torch.device(name)


@contextmanager
def attention_kernels(device: torch.device) -> Iterator[None]:
    """Forward passes on ``device`` inside this block use :data:`CUDA_ATTENTION_KERNELS`."""
    kernels = CUDA_ATTENTION_KERNELS
    if device.type != "cuda" or kernels is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, name) for name in kernels]):
        yield


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on GPU (weights only: log-softmax stays float32) and fp32 on CPU."""
    import torch

    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def device_kind(device: torch.device) -> str:
    """What the store's fingerprint names: ``cpu``, or ``cuda:`` and the GPU's model name."""
    if device.type != "cuda":
        return device.type
    import torch

    return f"cuda:{torch.cuda.get_device_name(device)}"

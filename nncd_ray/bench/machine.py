"""What the machine can do, measured in the same run as a benchmark: matmul rate, load, memory.

Throughputs are only comparable against the same machine at the same moment, so every benchmark
measures the reference rate itself (``shared/bench/PROTOCOL.md``: fp32 on CPU, bf16 on GPU).
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class MatmulRate:
    """Dense ``(n, n) @ (n, n)`` throughput: ``flops_per_s`` best of ``repeats`` (FLOP = 2 n³)."""

    flops_per_s: float
    median_flops_per_s: float
    n: int
    dtype: str
    device: str
    repeats: int


def matmul_rate(
    *, n: int = 2048, repeats: int = 10, dtype: torch.dtype | None = None, device: str = "cpu"
) -> MatmulRate:
    """Measure the dense matmul rate in FLOP/s (2 n³ per product) on ``device``.

    The best of ``repeats`` timed products after two warm-ups: the peak the hardware reaches now,
    which is the fair denominator for a model's effective rate (a shared machine only lowers it).
    """
    import torch

    dtype = dtype or (torch.float32 if device == "cpu" else torch.bfloat16)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    times: list[float] = []
    with torch.inference_mode():
        for step in range(repeats + 2):
            synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            if step >= 2:
                times.append(time.perf_counter() - start)
    times.sort()
    flops = 2.0 * n**3
    return MatmulRate(
        flops_per_s=flops / times[0],
        median_flops_per_s=flops / times[len(times) // 2],
        n=n,
        dtype=str(dtype).removeprefix("torch."),
        device=device,
        repeats=repeats,
    )


def synchronize(device: str) -> None:
    """Wait for the device's queued work (nothing to wait for on a CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def milliseconds(step: Callable[[], Any], device: str, repeats: int) -> float:
    """Mean milliseconds of ``step`` over ``repeats`` runs on ``device``, after one warm-up."""
    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / repeats * 1e3


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch threads and the load average (a shared machine skews timings)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


__all__ = ["MatmulRate", "machine_info", "matmul_rate", "peak_rss_bytes", "synchronize"]

"""What ``GET /metrics`` reports: requests and responses by kind, latency percentiles, queries and
query-reference pairs per second, and how full the scorer's batches were (pure Python + numpy).

Kept by the front end in memory (it restarts with the replica). Latencies are over the most recent
:attr:`ServiceMetrics.window` answered scoring requests, rates over the last
:attr:`ServiceMetrics.rate_window_s` seconds. Ray Serve's own Prometheus metrics
(``ray_serve_num_http_requests``, ``ray_serve_http_request_latency_ms`` …) are exported by Ray's
metrics agent beside these.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

PERCENTILES = (50, 95, 99)


def latency_summary(seconds: Iterable[float]) -> dict[str, float | int | None]:
    """``{"n", "p50", "p95", "p99", "mean", "max"}`` in milliseconds (linear interpolation between
    order statistics, numpy's default); None for each figure when there is no sample."""
    values = np.asarray(list(seconds), dtype=np.float64) * 1000.0
    summary: dict[str, float | int | None] = {"n": int(values.size)}
    if values.size == 0:
        summary |= {f"p{p}": None for p in PERCENTILES} | {"mean": None, "max": None}
        return summary
    for p, value in zip(PERCENTILES, np.percentile(values, PERCENTILES).tolist(), strict=True):
        summary[f"p{p}"] = round(float(value), 3)
    summary["mean"] = round(float(values.mean()), 3)
    summary["max"] = round(float(values.max()), 3)
    return summary


class ServiceMetrics:
    """Counters and recent samples of one front-end replica (see the module doc)."""

    def __init__(
        self,
        *,
        n_refs: int,
        window: int = 4096,
        rate_window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.n_refs = n_refs
        self.window = window
        self.rate_window_s = rate_window_s
        self._clock = clock
        self._started = clock()
        self.requests: Counter[str] = Counter()
        self.responses: Counter[int] = Counter()
        self.retries = 0
        self.queries = 0
        self._latencies: deque[float] = deque(maxlen=window)
        # (time, queries answered) of recent scoring requests, for the rates
        self._answered: deque[tuple[float, int]] = deque()
        # queries per scorer batch that answered recent queries
        self._batch_sizes: deque[int] = deque(maxlen=window)

    def record(
        self,
        endpoint: str,
        status: int,
        seconds: float,
        *,
        queries: int = 0,
        batch_sizes: Sequence[int] = (),
    ) -> None:
        """One request answered with ``status`` after ``seconds``; ``queries`` documents scored
        (answered 200 only), each in a scorer batch of ``batch_sizes[i]`` queries."""
        self.requests[endpoint] += 1
        self.responses[status] += 1
        if status != 200 or queries == 0:
            return
        now = self._clock()
        self.queries += queries
        self._latencies.append(seconds)
        self._answered.append((now, queries))
        self._batch_sizes.extend(batch_sizes)
        self._trim(now)

    def retried(self) -> None:
        """A request sent again after its scorer replica died."""
        self.retries += 1

    def _trim(self, now: float) -> None:
        while self._answered and self._answered[0][0] < now - self.rate_window_s:
            self._answered.popleft()

    def snapshot(self) -> dict[str, Any]:
        """The ``GET /metrics`` body (JSON-able)."""
        now = self._clock()
        self._trim(now)
        uptime = now - self._started
        span = max(min(self.rate_window_s, uptime), 1e-9)
        recent = sum(n for _, n in self._answered)
        batches = list(self._batch_sizes)
        return {
            "uptime_s": round(uptime, 3),
            "requests": dict(sorted(self.requests.items())),
            "responses": {str(code): n for code, n in sorted(self.responses.items())},
            "retries": self.retries,
            "queries": self.queries,
            "pairs": self.queries * self.n_refs,
            "latency_ms": latency_summary(self._latencies),
            "rate_window_s": round(span, 3),
            "queries_per_s": round(recent / span, 3),
            "pairs_per_s": round(recent * self.n_refs / span, 3),
            # each query saw its batch's size: the batches' own mean is the harmonic mean of
            # what the queries saw (a batch of b queries is seen b times)
            "mean_queries_per_batch": round(len(batches) / sum(1.0 / b for b in batches), 3)
            if batches
            else None,
        }


__all__ = ["PERCENTILES", "ServiceMetrics", "latency_summary"]

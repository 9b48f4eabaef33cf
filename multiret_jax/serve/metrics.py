"""The service's counters for ``GET /metrics``: requests and their latency per endpoint,
batch sizes, encoder calls per padded shape, and JAX compilations after the warm-up.

Recorded from the event loop (requests) and the batcher's worker thread (batches), so
every update takes a lock. Latency percentiles are over the last ``window`` requests of
an endpoint.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Deque, Dict

import numpy as np

PERCENTILES = (50, 90, 99)
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class Metrics:
    """Request, batch and compilation counters.

    Args:
      window: latencies kept per endpoint for the percentiles.
    """

    def __init__(self, window: int = 10_000):
        self._lock = threading.Lock()
        self.started = time.time()
        self.window = int(window)
        self.requests: Dict[str, collections.Counter] = collections.defaultdict(
            collections.Counter)
        self.latency: Dict[str, Deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=self.window))
        self.batch_queries: collections.Counter = collections.Counter()
        self.batch_requests: collections.Counter = collections.Counter()
        self.call_rows: collections.Counter = collections.Counter()
        self.call_shapes: collections.Counter = collections.Counter()
        self.compiles = 0
        self.warm_up: Dict[str, Any] = {}
        self._compiles_at_warm_up = 0

    # -- recording
    def request(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[path][str(status)] += 1
            self.latency[path].append(seconds)

    def batch(self, num_requests: int, num_queries: int) -> None:
        with self._lock:
            self.batch_requests[num_requests] += 1
            self.batch_queries[num_queries] += 1

    def encoder_call(self, rows: int, batch: int, length: int) -> None:
        with self._lock:
            self.call_rows[rows] += 1
            self.call_shapes[f"{batch}x{length}"] += 1

    def compiled(self, event: str, *args, **kwargs) -> None:
        """A ``jax.monitoring`` duration listener: counts backend compilations."""
        if event == BACKEND_COMPILE_EVENT:
            with self._lock:
                self.compiles += 1

    def listen_to_jax(self) -> None:
        import jax.monitoring
        jax.monitoring.register_event_duration_secs_listener(self.compiled)

    def warmed_up(self, info: Dict[str, Any]) -> None:
        with self._lock:
            self.warm_up = dict(info)
            self._compiles_at_warm_up = self.compiles

    # -- reporting
    def snapshot(self) -> Dict[str, Any]:
        """The JSON of ``GET /metrics``."""
        with self._lock:
            endpoints = {}
            for path, statuses in sorted(self.requests.items()):
                lat = np.asarray(self.latency[path], np.float64) * 1000.0
                endpoints[path] = {
                    "count": sum(statuses.values()),
                    "errors": sum(n for s, n in statuses.items() if int(s) >= 400),
                    "status": dict(sorted(statuses.items())),
                    "latency_ms": {f"p{p}": float(np.percentile(lat, p)) if len(lat) else None
                                   for p in PERCENTILES},
                }
            hist = lambda c: {str(k): v for k, v in sorted(c.items())}
            return {
                "uptime_s": time.time() - self.started,
                "requests": endpoints,
                "batches": {"count": sum(self.batch_requests.values()),
                            "requests_per_batch": hist(self.batch_requests),
                            "queries_per_batch": hist(self.batch_queries)},
                "encoder_calls": {"count": sum(self.call_rows.values()),
                                  "rows_per_call": hist(self.call_rows),
                                  "padded_shapes": dict(sorted(self.call_shapes.items()))},
                "warm_up": self.warm_up,
                "compiles_after_warm_up": self.compiles - self._compiles_at_warm_up,
            }

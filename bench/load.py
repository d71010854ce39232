"""The HTTP load generator: several client connections posting batches as fast as answered.

Each connection is a thread with its own keep-alive ``httpx.Client``; the bodies are encoded
beforehand, so the generator mostly waits on sockets. It still shares the machine (and, in its
own process, one GIL) with the service it measures.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field

import httpx

from bench.workload import Batch


@dataclass
class LoadResult:
    """What one :func:`post_batches` run did."""

    requests: int = 0
    calls: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def percentile_ms(self, fraction: float) -> float:
        """The latency below which ``fraction`` of requests finished, in milliseconds."""
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def calls_per_s(self) -> float:
        """Segment calls applied per second of wall time."""
        return self.calls / self.seconds if self.seconds else 0.0


def basic_auth(api_key: str) -> str:
    """The ``Authorization`` header value for a write key (empty password), as Segment sends."""
    return "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()


def post_batches(url: str, api_key: str, batches: list[Batch], *, connections: int) -> LoadResult:
    """POST every batch to ``url/v1/batch`` over ``connections`` concurrent connections.

    Returns:
        Counts, wall time from the first request to the last answer, and per-request latency.
        A non-200 answer is recorded in ``errors`` (the batch is not retried).
    """
    result = LoadResult()
    lock = threading.Lock()
    pending = list(reversed(batches))
    headers = {"Authorization": basic_auth(api_key), "Content-Type": "application/json"}

    def run() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            while True:
                with lock:
                    if not pending:
                        return
                    batch = pending.pop()
                started = time.perf_counter()
                try:
                    response = client.post("/v1/batch", content=batch.body)
                    error = None if response.status_code == 200 else response.text[:300]
                except httpx.HTTPError as exc:
                    error = repr(exc)
                elapsed = time.perf_counter() - started
                with lock:
                    result.requests += 1
                    result.latencies_s.append(elapsed)
                    if error is None:
                        result.calls += batch.calls
                    else:
                        result.errors.append(error)

    threads = [threading.Thread(target=run, name=f"load-{i}") for i in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    return result

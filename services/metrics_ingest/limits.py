"""Backpressure: a token bucket of points per job and a cap on requests in flight, in one process."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

MAX_BUCKETS = 10_000


class Throttle:
    """A request may start while its job's bucket is not negative and fewer than ``max_in_flight`` requests
    run. Its points are taken once the body is read, so one batch may overdraw the bucket; the job then
    waits until the bucket has refilled to zero. ``retry_after`` gives whole seconds for ``Retry-After``.
    """

    def __init__(self, points_per_second: float, burst_points: float, max_in_flight: int,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = points_per_second
        self.burst = burst_points
        self.max_in_flight = max_in_flight
        self.clock = clock
        self.in_flight = 0
        self._buckets: dict[str, tuple[float, float]] = {}

    def _tokens(self, job_id: str, now: float) -> float:
        tokens, then = self._buckets.get(job_id, (self.burst, now))
        return min(self.burst, tokens + (now - then) * self.rate)

    def retry_after(self, job_id: str) -> int | None:
        """None when the request may start, else the seconds to wait."""
        if self.in_flight >= self.max_in_flight:
            return 1
        tokens = self._tokens(job_id, self.clock())
        return None if tokens >= 0 else max(1, math.ceil(-tokens / self.rate))

    def take(self, job_id: str, points: int) -> None:
        now = self.clock()
        if len(self._buckets) >= MAX_BUCKETS:
            self._forget_full(now)
        self._buckets[job_id] = (self._tokens(job_id, now) - points, now)

    def _forget_full(self, now: float) -> None:
        for job_id in [j for j in self._buckets if self._tokens(j, now) >= self.burst]:
            del self._buckets[job_id]

    @contextmanager
    def slot(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

"""Live fan-out: stored batches are published on NATS for viewers, from one background task.

The request that stored a batch only queues it, so a slow or absent viewer never holds up an
acknowledgement. When more than ``max_queued`` batches wait, the oldest is dropped from the live feed
(its points are in PostgreSQL; only the live view misses them). Messages have the shape of
``MetricsAppended`` and ``PredictionsAppended``, at most ``MAX_VALUES_PER_MESSAGE`` metric values or
``MAX_PREDICTIONS_PER_MESSAGE`` predictions each, so they stay under the server's ``max_payload``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
from nats.aio.client import Client as Nats

from shared import subjects

from .batch import Batch

log = logging.getLogger(__name__)

MAX_VALUES_PER_MESSAGE = 2_000
MAX_PREDICTIONS_PER_MESSAGE = 50


def _envelope(job_id: str, key: str, items: list, attempt: int = 1) -> bytes:
    return orjson.dumps({"event_id": str(uuid.uuid4()), "occurred_at": datetime.now(UTC), "job_id": job_id,
                         "schema_version": 1, "attempt": attempt, key: items})


def _rows(batch: Batch) -> list[dict]:
    """One point per step holding every value logged at it, oldest step first."""
    series = batch.series
    if not series:
        return []
    steps = series[0].steps
    if all(s.steps == steps for s in series):  # the usual batch: every metric at the same steps
        names = [s.name for s in series]
        epochs = next((s.epochs for s in series if s.epochs is not None), itertools.repeat(None))
        times = next((s.times for s in series if s.times is not None), itertools.repeat(batch.default_time))
        values = [dict(zip(names, row, strict=False)) for row in zip(*(s.values for s in series), strict=False)]
        return [{"step": step, "epoch": epoch, "values": v, "recorded_at": when}
                for step, epoch, when, v in zip(steps, epochs, times, values, strict=False)]
    rows: dict[int, dict] = {}
    for s in series:
        epochs = s.epochs if s.epochs is not None else itertools.repeat(None)
        times = s.times if s.times is not None else itertools.repeat(batch.default_time)
        for step, value, epoch, when in zip(s.steps, s.values, epochs, times, strict=False):
            row = rows.get(step)
            if row is None:
                rows[step] = {"step": step, "epoch": epoch, "values": {s.name: value}, "recorded_at": when}
            else:
                row["values"][s.name] = value
                if row["epoch"] is None:
                    row["epoch"] = epoch
    return [rows[step] for step in sorted(rows)]


def metric_messages(job_id: str, batch: Batch, max_values: int = MAX_VALUES_PER_MESSAGE) -> Iterator[bytes]:
    """``MetricsAppended`` bodies of at most ``max_values`` values each."""
    chunk: list[dict] = []
    size = 0
    for row in _rows(batch):
        if chunk and size + len(row["values"]) > max_values:
            yield _envelope(job_id, "metrics", chunk, batch.attempt)
            chunk, size = [], 0
        chunk.append(row)
        size += len(row["values"])
    if chunk:
        yield _envelope(job_id, "metrics", chunk, batch.attempt)


def prediction_messages(job_id: str, batch: Batch) -> Iterator[bytes]:
    items = [p.model_dump(mode="json") for p in batch.predictions]
    for start in range(0, len(items), MAX_PREDICTIONS_PER_MESSAGE):
        yield _envelope(job_id, "predictions", items[start:start + MAX_PREDICTIONS_PER_MESSAGE], batch.attempt)


class LiveFanout:
    def __init__(self, nc: Nats, max_queued: int):
        self.nc = nc
        self.max_queued = max_queued
        self.dropped = 0
        self._queue: deque[tuple[str, Batch]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="live-fanout")

    def submit(self, job_id: str, batch: Batch) -> None:
        if len(self._queue) >= self.max_queued:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("live fan-out is behind; %d stored batches were not sent to live viewers", self.dropped)
        self._queue.append((job_id, batch))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._drain()

    async def _drain(self) -> None:
        while self._queue:
            job_id, batch = self._queue.popleft()
            messages = itertools.chain(
                ((subjects.job_metrics(job_id), body) for body in metric_messages(job_id, batch)),
                ((subjects.job_predictions(job_id), body) for body in prediction_messages(job_id, batch)))
            for subject, body in messages:
                try:
                    await self.nc.publish(subject, body)
                except Exception:  # live fan-out is best effort; the rows are stored
                    log.exception("live fan-out of batch %s for job %s failed", batch.batch_id, job_id)
            await asyncio.sleep(0)  # let requests in between batches

    async def close(self, grace: float = 5.0) -> None:
        """Send what is queued (for at most ``grace`` seconds), then stop."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await asyncio.wait_for(self._drain(), grace)
            await self.nc.flush(grace)
        except Exception:
            log.warning("live fan-out stopped with %d batches unsent", len(self._queue))

"""The ingest tables: batches seen, metric points, predictions.

A batch is stored in one transaction, so it is either wholly committed or not at all, and only then
acknowledged. Two keys keep a point from being stored twice: ``(job_id, batch_id)`` drops a replayed batch
before anything else is written, and ``(job_id, name, step)`` drops a point that another batch already
stored. Points go in with one binary ``COPY`` inside a savepoint; when it meets a point already stored (the
batch overlaps another), the savepoint is rolled back and the points go in with
``INSERT ... ON CONFLICT DO NOTHING``. Rows are written in key order (name, then step), so concurrent writers
of overlapping batches wait on each other rather than deadlock; a deadlock that happens anyway is retried.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Iterator

import asyncpg

from .batch import Batch
from .pgcopy import COLUMNS, copy_data

log = logging.getLogger(__name__)

ATTEMPTS = 3


def point_records(job: uuid.UUID, batch: Batch) -> Iterator[tuple]:
    """The batch's points as ``COLUMNS`` tuples, in key order."""
    for s in batch.series:
        yield from zip(itertools.repeat(job), itertools.repeat(s.name), s.steps,
                       s.epochs if s.epochs is not None else itertools.repeat(None), s.values,
                       s.times if s.times is not None else itertools.repeat(batch.default_time),
                       itertools.repeat(batch.attempt))


class IngestRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def store_batch(self, job_id: str, batch: Batch) -> bool:
        """Store one batch in one transaction. False when this job stored this batch id before."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    return await self._store(conn, uuid.UUID(job_id), batch)
            except asyncpg.DeadlockDetectedError:
                if attempt == ATTEMPTS:
                    raise
                log.warning("deadlock storing batch %s of job %s; retrying", batch.batch_id, job_id)
        raise AssertionError("unreachable")

    async def _store(self, conn: asyncpg.Connection, job: uuid.UUID, batch: Batch) -> bool:
        fresh = await conn.fetchval(
            """INSERT INTO ingest_batches (batch_id, job_id, points, predictions) VALUES ($1, $2, $3, $4)
               ON CONFLICT DO NOTHING RETURNING true""",
            batch.batch_id, job, batch.points, len(batch.predictions))
        if not fresh:
            return False
        first = batch.first_step
        if first is not None:
            await conn.execute(
                """INSERT INTO metric_attempts (job_id, attempt, first_step) VALUES ($1, $2, $3)
                   ON CONFLICT (job_id, attempt) DO UPDATE
                   SET first_step = LEAST(metric_attempts.first_step, EXCLUDED.first_step)
                   WHERE EXCLUDED.first_step < metric_attempts.first_step""", job, batch.attempt, first)
        if batch.series:
            try:
                async with conn.transaction():
                    data = memoryview(copy_data(job, batch))  # a buffer: asyncpg would take bytes for a path
                    await conn.copy_to_table("metric_points", source=data, columns=COLUMNS, format="binary")
            except asyncpg.UniqueViolationError:
                await self._insert_new_points(conn, job, batch)
        if batch.predictions:
            await conn.executemany(
                """INSERT INTO predictions (job_id, step, sample_index, epoch, prompt, generated, expected, scores,
                                            attempt)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING""",
                [(job, p.step, p.sample_index, p.epoch, p.prompt, p.generated, p.expected, p.scores, batch.attempt)
                 for p in batch.predictions])
        return True

    @staticmethod
    async def _insert_new_points(conn: asyncpg.Connection, job: uuid.UUID, batch: Batch) -> None:
        _, names, steps, epochs, values, times, _ = zip(*point_records(job, batch), strict=True)
        await conn.execute(
            """INSERT INTO metric_points (job_id, name, step, epoch, value, recorded_at, attempt)
               SELECT $1, *, $7 FROM unnest($2::text[], $3::int[], $4::float8[], $5::float8[], $6::timestamptz[])
               ON CONFLICT DO NOTHING""",
            job, names, steps, epochs, values, times, batch.attempt)

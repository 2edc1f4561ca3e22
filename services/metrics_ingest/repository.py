"""The ingest tables: batches seen, metric points, predictions. Writes are set-based and idempotent."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from shared.events import MetricPoint, PredictionRecord


class IngestRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def store_batch(self, job_id: str, batch_id: str, metrics: list[MetricPoint],
                          predictions: list[PredictionRecord]) -> bool:
        """Store one batch in one transaction. False when this batch id was stored before."""
        now = datetime.now(UTC)
        names, steps, epochs, values, times = [], [], [], [], []
        for point in metrics:
            for name, value in point.values.items():
                names.append(name)
                steps.append(point.step)
                epochs.append(point.epoch)
                values.append(float(value))
                times.append(point.recorded_at or now)
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(
                """INSERT INTO ingest_batches (batch_id, job_id, points, predictions) VALUES ($1, $2, $3, $4)
                   ON CONFLICT DO NOTHING RETURNING batch_id""",
                batch_id, job_id, len(values), len(predictions))
            if fresh is None:
                return False
            if values:
                await conn.execute(
                    """INSERT INTO metric_points (job_id, name, step, epoch, value, recorded_at)
                       SELECT $1, * FROM unnest($2::text[], $3::int[], $4::float8[], $5::float8[],
                                                $6::timestamptz[])
                       ON CONFLICT DO NOTHING""",
                    job_id, names, steps, epochs, values, times)
            if predictions:
                await conn.executemany(
                    """INSERT INTO predictions (job_id, step, sample_index, epoch, prompt, generated, expected,
                                                scores)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING""",
                    [(job_id, p.step, p.sample_index, p.epoch, p.prompt, p.generated, p.expected, p.scores)
                     for p in predictions])
        return True

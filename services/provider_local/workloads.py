"""The local provider's table: one row per attempt of a job, with the process that runs it."""

from __future__ import annotations

import asyncpg


class WorkloadRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def claim(self, job_id: str, attempt: int) -> bool:
        """Reserve this attempt; False when it was claimed or cancelled before (a redelivery)."""
        claimed = await self.pool.fetchval(
            """INSERT INTO local_workloads (job_id, attempt, state) VALUES ($1, $2, 'starting')
               ON CONFLICT DO NOTHING RETURNING job_id""", job_id, attempt)
        return claimed is not None

    async def started(self, job_id: str, attempt: int, *, bundle_dir: str, pid: int, pid_started_at: float) -> None:
        await self.pool.execute(
            """UPDATE local_workloads SET state = 'running', bundle_dir = $3, pid = $4, pid_started_at = $5,
                   updated_at = now() WHERE job_id = $1 AND attempt = $2""",
            job_id, attempt, bundle_dir, pid, pid_started_at)

    async def ended(self, job_id: str, attempt: int) -> None:
        await self.pool.execute(
            "UPDATE local_workloads SET state = 'ended', updated_at = now() WHERE job_id = $1 AND attempt = $2",
            job_id, attempt)

    async def request_stop(self, job_id: str) -> list[asyncpg.Record]:
        """Flag every attempt of the job; returns the live ones. A job not started yet gets a tombstone."""
        rows = await self.pool.fetch(
            """UPDATE local_workloads SET stop_requested = true, updated_at = now()
               WHERE job_id = $1 RETURNING *""", job_id)
        if not rows:
            await self.pool.execute(
                """INSERT INTO local_workloads (job_id, attempt, state, stop_requested)
                   VALUES ($1, 0, 'cancelled', true) ON CONFLICT DO NOTHING""", job_id)
        return [r for r in rows if r["state"] in ("starting", "running")]

    async def stop_requested(self, job_id: str) -> bool:
        return bool(await self.pool.fetchval(
            "SELECT bool_or(stop_requested) FROM local_workloads WHERE job_id = $1", job_id))

    async def live(self) -> list[asyncpg.Record]:
        return await self.pool.fetch("SELECT * FROM local_workloads WHERE state IN ('starting', 'running')")

"""A cloud provider service's table of workloads: one row per attempt of a job and the resource running it.
Each provider service owns its own table (``<provider>_workloads``, same shape)."""

from __future__ import annotations

import asyncpg


class CloudWorkloads:
    def __init__(self, pool: asyncpg.Pool, table: str):
        if not table.isidentifier():
            raise ValueError(f"bad table name {table!r}")
        self.pool, self.table = pool, table

    async def claim(self, job_id: str, attempt: int, user_id: str) -> bool:
        """Reserve this attempt; False when it was claimed (or cancelled) before."""
        return await self.pool.fetchval(
            f"""INSERT INTO {self.table} (job_id, attempt, user_id, state) VALUES ($1, $2, $3, 'starting')
                ON CONFLICT DO NOTHING RETURNING true""", job_id, attempt, user_id) is not None

    async def provisioned(self, job_id: str, attempt: int, resource_id: str, cost_per_hour: float) -> None:
        await self.pool.execute(
            f"""UPDATE {self.table} SET state = 'provisioning', resource_id = $3, cost_per_hour = $4
                WHERE job_id = $1 AND attempt = $2""", job_id, attempt, resource_id, cost_per_hour)

    async def running(self, job_id: str, attempt: int) -> None:
        await self.pool.execute(
            f"""UPDATE {self.table} SET state = 'running', running_since = COALESCE(running_since, now())
                WHERE job_id = $1 AND attempt = $2""", job_id, attempt)

    async def ended(self, job_id: str, attempt: int) -> bool:
        """Mark the attempt ended; False when it already was (so its end is reported once)."""
        return await self.pool.fetchval(
            f"""UPDATE {self.table} SET state = 'ended', ended_at = now()
                WHERE job_id = $1 AND attempt = $2 AND state <> 'ended' RETURNING true""",
            job_id, attempt) is not None

    async def request_stop(self, job_id: str, user_id: str) -> list[asyncpg.Record]:
        rows = await self.pool.fetch(
            f"""UPDATE {self.table} SET stop_requested = true WHERE job_id = $1
                RETURNING *, extract(epoch FROM now() - created_at) AS age_s""", job_id)
        if not rows:
            await self.pool.execute(
                f"""INSERT INTO {self.table} (job_id, attempt, user_id, state, stop_requested)
                    VALUES ($1, 0, $2, 'ended', true) ON CONFLICT DO NOTHING""", job_id, user_id)
        return [r for r in rows if r["state"] != "ended"]

    async def stop_requested(self, job_id: str) -> bool:
        return bool(await self.pool.fetchval(
            f"SELECT bool_or(stop_requested) FROM {self.table} WHERE job_id = $1", job_id))

    async def live(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            f"""SELECT *, extract(epoch FROM now() - created_at) AS age_s FROM {self.table}
                WHERE state <> 'ended' ORDER BY created_at""")

    async def is_live(self, job_id: str, attempt: int) -> bool:
        return bool(await self.pool.fetchval(
            f"SELECT state <> 'ended' FROM {self.table} WHERE job_id = $1 AND attempt = $2", job_id, attempt))

    async def users(self) -> list[str]:
        return [r["user_id"] for r in await self.pool.fetch(f"SELECT DISTINCT user_id FROM {self.table}")]

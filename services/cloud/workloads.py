"""A provider service's table of workloads: one row per attempt of a job and the resource running it.
Each provider service owns its own table (``<provider>_workloads``, same shape).

``state`` is starting (claimed, no resource yet) → provisioning ⇄ running → ended; ``state_since`` is the last
entry into the current state, which the runner's timers count from. ``last_uptime_s`` and ``restarts`` follow
container restarts; ``last_progress`` and ``progress_at`` the trainer's progress counter, for stall detection;
``log_offset`` and ``log_lines`` how much of its log was published (bytes, lines).
"""

from __future__ import annotations

import asyncpg

_AGE = ("extract(epoch FROM now() - created_at) AS age_s, extract(epoch FROM now() - state_since) AS state_age_s, "
        "extract(epoch FROM now() - COALESCE(cost_since, created_at)) AS price_age_s")


class CloudWorkloads:
    def __init__(self, pool: asyncpg.Pool, table: str):
        if not table.isidentifier():
            raise ValueError(f"bad table name {table!r}")
        self.pool, self.table = pool, table

    async def claim(self, job_id: str, attempt: int, user_id: str, command: dict, lease_s: float) -> bool:
        """Reserve this attempt. True also for an attempt claimed more than ``lease_s`` ago whose resource was
        never recorded (the provider stopped between create and record): provisioning it again looks the
        resource up by name first. False when another delivery holds it, or it was provisioned, ended or
        cancelled before."""
        return await self.pool.fetchval(
            f"""INSERT INTO {self.table} (job_id, attempt, user_id, state, command, claimed_at)
                VALUES ($1, $2, $3, 'starting', $4, now())
                ON CONFLICT (job_id, attempt) DO UPDATE SET claimed_at = now()
                    WHERE {self.table}.state = 'starting' AND {self.table}.resource_id IS NULL
                      AND {self.table}.claimed_at < now() - make_interval(secs => $5)
                RETURNING true""", job_id, attempt, user_id, command, lease_s) is not None

    async def renew_claim(self, job_id: str, attempt: int) -> None:
        """The claim's provisioning is still under way here: keep others from taking it over."""
        await self.pool.execute(
            f"""UPDATE {self.table} SET claimed_at = now()
                WHERE job_id = $1 AND attempt = $2 AND state = 'starting' AND resource_id IS NULL""",
            job_id, attempt)

    async def abandoned(self, lease_s: float) -> list[asyncpg.Record]:
        """Claims older than the lease that never recorded a resource: their provisioning died midway."""
        return await self.pool.fetch(
            f"""SELECT * FROM {self.table} WHERE state = 'starting' AND resource_id IS NULL
                AND command IS NOT NULL AND claimed_at < now() - make_interval(secs => $1)""", lease_s)

    async def provisioned(self, job_id: str, attempt: int, resource_id: str, cost_per_hour: float) -> None:
        await self.pool.execute(
            f"""UPDATE {self.table} SET state = 'provisioning', state_since = now(), resource_id = $3,
                    cost_per_hour = $4 WHERE job_id = $1 AND attempt = $2 AND state <> 'ended'""",
            job_id, attempt, resource_id, cost_per_hour)

    async def reprice(self, job_id: str, attempt: int, cost_per_hour: float) -> None:
        """The provider bills another hourly price from now: what accrued at the old one is kept."""
        await self.pool.execute(
            f"""UPDATE {self.table}
                SET cost_accrued_usd = cost_accrued_usd
                        + cost_per_hour * extract(epoch FROM now() - COALESCE(cost_since, created_at)) / 3600.0,
                    cost_since = now(), cost_per_hour = $3
                WHERE job_id = $1 AND attempt = $2 AND state <> 'ended' AND cost_per_hour <> $3""",
            job_id, attempt, cost_per_hour)

    async def enter(self, job_id: str, attempt: int, state: str) -> None:
        """Move to ``state`` (provisioning or running); ``state_since`` restarts only when the state changes."""
        await self.pool.execute(
            f"""UPDATE {self.table} SET state = $3,
                    state_since = CASE WHEN state = $3 THEN state_since ELSE now() END,
                    running_since = CASE WHEN $3 = 'running' THEN COALESCE(running_since, now())
                                         ELSE running_since END
                WHERE job_id = $1 AND attempt = $2 AND state NOT IN ('ended', 'starting')""", job_id, attempt, state)

    async def started(self, job_id: str, attempt: int) -> None:
        await self.pool.execute(
            f"UPDATE {self.table} SET workload_started = true WHERE job_id = $1 AND attempt = $2", job_id, attempt)

    async def saw_uptime(self, job_id: str, attempt: int, uptime_s: float, restarted: bool) -> None:
        await self.pool.execute(
            f"""UPDATE {self.table} SET last_uptime_s = $3, restarts = restarts + $4::int
                WHERE job_id = $1 AND attempt = $2""", job_id, attempt, uptime_s, int(restarted))

    async def saw_progress(self, job_id: str, attempt: int, beats: int) -> None:
        """Record the workload's progress counter; ``progress_at`` moves only when the counter does."""
        await self.pool.execute(
            f"""UPDATE {self.table} SET progress_at = CASE WHEN last_progress IS DISTINCT FROM $3 THEN now()
                                                      ELSE progress_at END,
                    last_progress = $3 WHERE job_id = $1 AND attempt = $2""", job_id, attempt, beats)

    async def reported(self, job_id: str, attempt: int) -> None:
        await self.pool.execute(
            f"UPDATE {self.table} SET reported_at = now() WHERE job_id = $1 AND attempt = $2", job_id, attempt)

    async def ended(self, conn: asyncpg.Connection, job_id: str, attempt: int, *, spool_pending: bool = False) -> bool:
        """Mark the attempt ended, in the caller's transaction; False when it already was (so its end is reported
        once). ``spool_pending``: metrics it spooled are still to be delivered (``pending_spools``)."""
        return await conn.fetchval(
            f"""UPDATE {self.table} SET state = 'ended', state_since = now(), ended_at = now(), spool_pending = $3
                WHERE job_id = $1 AND attempt = $2 AND state <> 'ended' RETURNING true""",
            job_id, attempt, spool_pending) is not None

    async def logged(self, job_id: str, attempt: int, offset: int, lines: int) -> None:
        """The attempt's log was published up to byte ``offset``, its line ``lines`` (never moves back)."""
        await self.pool.execute(
            f"""UPDATE {self.table} SET log_offset = GREATEST(log_offset, $3), log_lines = GREATEST(log_lines, $4)
                WHERE job_id = $1 AND attempt = $2""", job_id, attempt, offset, lines)

    async def ended_since(self, seconds: float) -> list[asyncpg.Record]:
        """Attempts that ended in the last ``seconds`` (their log may still get its last lines)."""
        return await self.pool.fetch(
            f"""SELECT job_id, attempt, state, log_offset, log_lines, command FROM {self.table}
                WHERE state = 'ended' AND attempt > 0 AND ended_at > now() - make_interval(secs => $1)""", seconds)

    async def pending_spools(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(f"SELECT job_id, attempt FROM {self.table} WHERE spool_pending")

    async def spool_delivered(self, job_id: str, attempt: int) -> None:
        await self.pool.execute(
            f"UPDATE {self.table} SET spool_pending = false WHERE job_id = $1 AND attempt = $2", job_id, attempt)

    async def request_stop(self, job_id: str, user_id: str) -> list[asyncpg.Record]:
        """Flag every attempt of the job; returns the live ones. A job not started yet gets a tombstone."""
        rows = await self.pool.fetch(
            f"""UPDATE {self.table} SET stop_requested = true WHERE job_id = $1 RETURNING *, {_AGE}""", job_id)
        if not rows:
            await self.pool.execute(
                f"""INSERT INTO {self.table} (job_id, attempt, user_id, state, stop_requested)
                    VALUES ($1, 0, $2, 'ended', true) ON CONFLICT DO NOTHING""", job_id, user_id)
        return [r for r in rows if r["state"] != "ended"]

    async def stop_requested(self, job_id: str) -> bool:
        return bool(await self.pool.fetchval(
            f"SELECT bool_or(stop_requested) FROM {self.table} WHERE job_id = $1", job_id))

    async def get(self, job_id: str, attempt: int) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"SELECT *, {_AGE}, extract(epoch FROM now() - progress_at) AS progress_age_s, "
            f"extract(epoch FROM now() - reported_at) AS report_age_s FROM {self.table} "
            "WHERE job_id = $1 AND attempt = $2", job_id, attempt)

    async def live(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            f"""SELECT *, {_AGE}, extract(epoch FROM now() - progress_at) AS progress_age_s,
                       extract(epoch FROM now() - reported_at) AS report_age_s
                FROM {self.table} WHERE state <> 'ended' ORDER BY created_at""")

    async def resource_of(self, job_id: str, attempt: int) -> str | None:
        """The resource recorded for a live attempt, or None when the attempt is not live."""
        return await self.pool.fetchval(
            f"""SELECT COALESCE(resource_id, '') FROM {self.table}
                WHERE job_id = $1 AND attempt = $2 AND state <> 'ended'""", job_id, attempt)

    async def users(self) -> list[str]:
        return [r["user_id"] for r in await self.pool.fetch(
            f"SELECT DISTINCT user_id FROM {self.table} WHERE user_id <> ''")]

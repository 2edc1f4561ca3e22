"""The scheduler's tables: jobs, their history and their logs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.events import DeployRequested, WorkloadPhase, WorkloadReported
from shared.ids import derived_id
from shared.states import JobStatus, can_transition


@dataclass(frozen=True)
class Transition:
    """A status change that was recorded (now or by an earlier delivery of the same event)."""

    job_id: str
    previous: JobStatus | None
    status: JobStatus
    reason: str | None
    status_event_id: str


class JobRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def create(self, cmd: DeployRequested) -> Transition:
        """Create the job as queued; a redelivered command returns the transition recorded the first time."""
        status_event_id = derived_id(cmd.job_id, "status", JobStatus.QUEUED, 1)
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                """INSERT INTO jobs (id, user_id, provider, name, config_id, config, dataset_path,
                                     dataset_format, dataset_rows, provider_options, budget_limit_usd, status,
                                     alert_threshold_pct, auto_stop_on_budget, max_duration_hours, notify_email,
                                     placement)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'queued', $12, $13, $14, $15, $16)
                   ON CONFLICT (id) DO NOTHING RETURNING id""",
                cmd.job_id, cmd.user_id, cmd.provider, cmd.config.name, cmd.config_id,
                cmd.config.model_dump(mode="json"), cmd.dataset_path, cmd.dataset_format.value,
                cmd.dataset_rows, cmd.provider_options, cmd.budget_limit_usd, cmd.alert_threshold_pct,
                cmd.auto_stop_on_budget, cmd.max_duration_hours, cmd.notify_email,
                cmd.placement.model_dump(mode="json") if cmd.placement else None)
            if inserted is not None:
                await conn.execute(
                    """UPDATE jobs SET stop_requested = true WHERE id = $1 AND EXISTS (
                           SELECT 1 FROM early_stops WHERE job_id = $1 AND user_id = $2)""", cmd.job_id, cmd.user_id)
                await conn.execute(
                    """INSERT INTO job_history (job_id, previous, status, reason, source_event_id,
                                                status_event_id, occurred_at)
                       VALUES ($1, NULL, 'queued', 'deploy requested', $2, $3, $4)""",
                    cmd.job_id, cmd.event_id, status_event_id, cmd.occurred_at)
        return Transition(cmd.job_id, None, JobStatus.QUEUED, "deploy requested", status_event_id)

    async def get(self, job_id: str) -> asyncpg.Record | None:
        """The job, with ``clock_age_s``: seconds since it first asked for a machine."""
        return await self.pool.fetchrow(
            "SELECT *, extract(epoch FROM now() - clock_started_at)::float8 AS clock_age_s FROM jobs WHERE id = $1",
            job_id)

    async def transition(self, job_id: str, new: JobStatus, *, source_event_id: str, occurred_at: datetime,
                         reason: str | None = None, result: dict | None = None,
                         bump_attempt: bool = False,
                         placed: tuple[str, dict, dict] | None = None) -> Transition | None:
        """Apply ``new`` if the state machine allows it. Returns the transition, also when this source
        event was applied before (so its status event can be published again), or None when refused.
        ``placed``: (provider, provider_options, placement) the job moves to, with the transition."""
        async with self.pool.acquire() as conn, conn.transaction():
            seen = await conn.fetchrow(
                "SELECT previous, status, reason, status_event_id FROM job_history WHERE source_event_id = $1",
                source_event_id)
            if seen is not None:
                return Transition(job_id, seen["previous"] and JobStatus(seen["previous"]),
                                  JobStatus(seen["status"]), seen["reason"], seen["status_event_id"])
            row = await conn.fetchrow("SELECT status, attempt FROM jobs WHERE id = $1 FOR UPDATE", job_id)
            if row is None:
                return None
            current = JobStatus(row["status"])
            if not can_transition(current, new):
                return None
            attempt = row["attempt"] + 1 if bump_attempt else row["attempt"]
            status_event_id = derived_id(job_id, "status", new, attempt, source_event_id)
            await conn.execute(
                """UPDATE jobs SET status = $2, status_reason = $3, attempt = $4, updated_at = now(),
                       attempts_cost_usd = CASE WHEN $4 > attempt THEN cost_usd ELSE attempts_cost_usd END,
                       result = COALESCE($5, result),
                       started_at = CASE WHEN $2 = 'running' AND started_at IS NULL THEN now() ELSE started_at END,
                       finished_at = CASE WHEN $2 IN ('completed', 'failed', 'stopped', 'budget_exceeded')
                                          THEN now() ELSE finished_at END
                   WHERE id = $1""",
                job_id, new.value, reason, attempt, result)
            if placed is not None:
                await conn.execute(
                    """UPDATE jobs SET provider = $2, provider_options = $3, placement = $4, cost_per_hour = NULL,
                           resource_id = NULL WHERE id = $1""", job_id, *placed)
            await conn.execute(
                """INSERT INTO job_history (job_id, previous, status, reason, source_event_id,
                                            status_event_id, occurred_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                job_id, current.value, new.value, reason, source_event_id, status_event_id, occurred_at)
        return Transition(job_id, current, new, reason, status_event_id)

    async def recorded(self, source_event_ids: list[str]) -> list[tuple[str, Transition]]:
        """The transitions these source events caused, in the order they were recorded."""
        rows = await self.pool.fetch(
            """SELECT job_id, previous, status, reason, source_event_id, status_event_id FROM job_history
               WHERE source_event_id = ANY($1::text[]) ORDER BY id""", source_event_ids)
        return [(r["source_event_id"], Transition(str(r["job_id"]), r["previous"] and JobStatus(r["previous"]),
                                                  JobStatus(r["status"]), r["reason"], r["status_event_id"]))
                for r in rows]

    async def observe(self, job_id: str, *, log_tail: str | None, cost_usd: float | None,
                      resource_id: str | None = None, cost_per_hour: float | None = None,
                      progress: float | None = None, live: bool = False) -> None:
        """Record what a provider saw, whatever the state: the log tail, the cost so far (the attempt's: the job's
        adds what the attempts before it cost) and its hourly rate, its resource id, the progress. ``live``: the
        report is of a machine asked for or running, which starts the job's clock (``max_duration_hours``) if it
        has not started."""
        await self.pool.execute(
            """UPDATE jobs SET log_tail = COALESCE($2, log_tail),
                   cost_usd = CASE WHEN $3::float8 IS NULL THEN cost_usd ELSE attempts_cost_usd + $3::float8 END,
                   resource_id = COALESCE($4, resource_id), cost_per_hour = COALESCE($5, cost_per_hour),
                   progress = COALESCE($6, progress),
                   clock_started_at = CASE WHEN $7 THEN COALESCE(clock_started_at, now()) ELSE clock_started_at END,
                   updated_at = now() WHERE id = $1""",
            job_id, log_tail, cost_usd, resource_id, cost_per_hour, progress, live)

    async def mark_alerted(self, job_id: str, kind: str) -> bool:
        """Note that the budget alert of ``kind`` (threshold, limit_reached) went out; False when it had before."""
        column = {"threshold": "threshold_alerted_at", "limit_reached": "limit_alerted_at"}[kind]
        return await self.pool.fetchval(
            f"UPDATE jobs SET {column} = now() WHERE id = $1 AND {column} IS NULL RETURNING true",
            job_id) is not None

    async def record_error(self, evt: WorkloadReported) -> None:
        """Keep why an attempt failed or was preempted (once per report, however often it is delivered)."""
        result = evt.result
        error_type = (result.error_type if result and result.error_type else
                      "Preempted" if evt.phase is WorkloadPhase.PREEMPTED else "WorkloadFailed")
        message = (result.error_message if result and result.error_message else None) or evt.message or (
            f"the workload ended {evt.phase.value}" + (f" with exit code {evt.exit_code}"
                                                        if evt.exit_code is not None else ""))
        await self.pool.execute(
            """INSERT INTO job_errors (job_id, attempt, phase, error_type, error_message, error_field, traceback,
                                       occurred_at, source_event_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (source_event_id) DO NOTHING""",
            evt.job_id, evt.attempt, evt.phase.value, error_type, message, result.error_field if result else None,
            result.traceback if result else None, evt.occurred_at, evt.event_id)

    async def remember_stop(self, job_id: str, user_id: str, reason: str) -> None:
        """A stop for a job not created yet: ``create`` will make the job with its stop requested."""
        await self.pool.execute(
            "INSERT INTO early_stops (job_id, user_id, reason) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            job_id, user_id, reason)

    async def mark_stop_requested(self, job_id: str) -> None:
        await self.pool.execute("UPDATE jobs SET stop_requested = true, updated_at = now() WHERE id = $1", job_id)

    async def history(self, job_id: str) -> list[asyncpg.Record]:
        return await self.pool.fetch("SELECT * FROM job_history WHERE job_id = $1 ORDER BY id", job_id)


class JobLogs:
    """``job_log_lines``: every line of each attempt's log, kept once."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def append(self, job_id: str, attempt: int, first_line: int, lines: list[str]) -> list[tuple[int, str]]:
        """Store lines ``first_line``, ``first_line + 1`` ... of the attempt; returns (number, text) of those not
        stored before, in order. Nothing is stored for a job that does not exist."""
        rows = await self.pool.fetch(
            """INSERT INTO job_log_lines (job_id, attempt, number, text)
               SELECT $1, $2, $3 + l.n - 1, l.text FROM unnest($4::text[]) WITH ORDINALITY AS l(text, n)
               WHERE EXISTS (SELECT 1 FROM jobs WHERE id = $1)
               ON CONFLICT DO NOTHING RETURNING number, text""", job_id, attempt, first_line, lines)
        return sorted((r["number"], r["text"]) for r in rows)

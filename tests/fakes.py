"""Fakes for tests that drive handlers without a broker or a database (the one place they live).

``FakeJobs`` keeps the scheduler's jobs on a dict and applies the same state machine and the same idempotency by
source event as ``services.scheduler.repository.JobRepository``; ``RecordingBus`` keeps what is published."""

from __future__ import annotations

from datetime import UTC, datetime

from services.scheduler.repository import Transition
from shared.events import DeployRequested, Message, WorkloadReported
from shared.ids import derived_id
from shared.states import JobStatus, can_transition


class FakeJobs:
    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.histories: dict[str, list[Transition]] = {}
        self._by_source: dict[str, Transition] = {}
        self.early_stops: set[tuple[str, str]] = set()
        self.errors: list[WorkloadReported] = []

    async def create(self, cmd: DeployRequested) -> Transition:
        status_event_id = derived_id(cmd.job_id, "status", JobStatus.QUEUED, 1)
        if cmd.job_id not in self.rows:
            self.rows[cmd.job_id] = {
                "id": cmd.job_id, "user_id": cmd.user_id, "provider": cmd.provider, "name": cmd.config.name,
                "config": cmd.config.model_dump(mode="json"), "dataset_path": cmd.dataset_path,
                "dataset_format": cmd.dataset_format.value, "dataset_rows": cmd.dataset_rows,
                "provider_options": cmd.provider_options, "budget_limit_usd": cmd.budget_limit_usd,
                "alert_threshold_pct": cmd.alert_threshold_pct, "auto_stop_on_budget": cmd.auto_stop_on_budget,
                "max_duration_hours": cmd.max_duration_hours, "notify_email": cmd.notify_email,
                "placement": cmd.placement.model_dump(mode="json") if cmd.placement else None,
                "threshold_alerted_at": None, "limit_alerted_at": None, "clock_started_at": None,
                "status": "queued", "status_reason": None, "attempt": 1, "result": None,
                "cost_usd": 0.0, "attempts_cost_usd": 0.0, "cost_per_hour": None, "progress": None, "started_at": None,
                "log_tail": None, "resource_id": None,
                "stop_requested": (cmd.job_id, cmd.user_id) in self.early_stops}
            self.histories[cmd.job_id] = [Transition(cmd.job_id, None, JobStatus.QUEUED, "deploy requested",
                                                     status_event_id)]
        return Transition(cmd.job_id, None, JobStatus.QUEUED, "deploy requested", status_event_id)

    async def get(self, job_id: str) -> dict | None:
        row = self.rows.get(job_id)
        if row is None:
            return None
        clock = row["clock_started_at"]
        return dict(row) | {"clock_age_s": (datetime.now(UTC) - clock).total_seconds() if clock else None}

    async def transition(self, job_id: str, new: JobStatus, *, source_event_id: str, occurred_at: datetime,
                         reason: str | None = None, result: dict | None = None,
                         bump_attempt: bool = False,
                         placed: tuple[str, dict, dict] | None = None) -> Transition | None:
        if source_event_id in self._by_source:
            return self._by_source[source_event_id]
        row = self.rows.get(job_id)
        if row is None or not can_transition(JobStatus(row["status"]), new):
            return None
        current = JobStatus(row["status"])
        if bump_attempt:
            row["attempt"] += 1
            row["attempts_cost_usd"] = row["cost_usd"]
        row.update(status=new.value, status_reason=reason, result=result if result is not None else row["result"])
        if new is JobStatus.RUNNING and row["started_at"] is None:
            row["started_at"] = occurred_at
        if placed is not None:
            row.update(provider=placed[0], provider_options=placed[1], placement=placed[2], cost_per_hour=None,
                       resource_id=None)
        t = Transition(job_id, current, new, reason, derived_id(job_id, "status", new, row["attempt"],
                                                                source_event_id))
        self._by_source[source_event_id] = t
        self.histories[job_id].append(t)
        return t

    async def recorded(self, source_event_ids: list[str]) -> list[tuple[str, Transition]]:
        wanted = set(source_event_ids)
        return [(source, t) for source, t in self._by_source.items() if source in wanted]

    async def observe(self, job_id: str, *, log_tail: str | None, cost_usd: float | None,
                      resource_id: str | None = None, cost_per_hour: float | None = None,
                      progress: float | None = None, live: bool = False) -> None:
        row = self.rows[job_id]
        if cost_usd is not None:
            row["cost_usd"] = row["attempts_cost_usd"] + cost_usd
        for key, value in (("log_tail", log_tail), ("resource_id", resource_id),
                           ("cost_per_hour", cost_per_hour), ("progress", progress)):
            if value is not None:
                row[key] = value
        if live and row["clock_started_at"] is None:
            row["clock_started_at"] = datetime.now(UTC)

    async def mark_alerted(self, job_id: str, kind: str) -> bool:
        column = {"threshold": "threshold_alerted_at", "limit_reached": "limit_alerted_at"}[kind]
        if self.rows[job_id][column] is not None:
            return False
        self.rows[job_id][column] = datetime.now(UTC)
        return True

    async def record_error(self, evt: WorkloadReported) -> None:
        if all(e.event_id != evt.event_id for e in self.errors):
            self.errors.append(evt)

    async def remember_stop(self, job_id: str, user_id: str, reason: str) -> None:
        self.early_stops.add((job_id, user_id))

    async def mark_stop_requested(self, job_id: str) -> None:
        self.rows[job_id]["stop_requested"] = True

    def statuses(self, job_id: str) -> list[str]:
        return [t.status.value for t in self.histories[job_id]]


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[Message] = []
        self.announced: list[Message] = []

    async def publish(self, message: Message) -> None:
        self.published.append(message)

    async def announce(self, message: Message) -> None:
        self.announced.append(message)

    def types(self) -> list[str]:
        return [type(m).__name__ for m in self.published]


class FakeLogs:
    """``JobLogs`` in a dict: (job, attempt, number) → text, for the jobs in ``jobs``."""

    def __init__(self, jobs: set[str]) -> None:
        self.jobs = jobs
        self.lines: dict[tuple[str, int, int], str] = {}

    async def append(self, job_id: str, attempt: int, first_line: int, lines: list[str]) -> list[tuple[int, str]]:
        if job_id not in self.jobs:
            return []
        fresh = []
        for number, text in enumerate(lines, start=first_line):
            if (job_id, attempt, number) not in self.lines:
                self.lines[job_id, attempt, number] = text
                fresh.append((number, text))
        return fresh

"""What users are told: the event types they may subscribe to, and the JSON body of each webhook."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.events import BudgetAlert, JobStatusChanged
from shared.states import JobStatus

BUDGET_ALERT = "job.budget_alert"
TEST = "webhook.test"
#: Every type a webhook may name in ``events`` (``"*"``: all of them).
EVENT_TYPES: tuple[str, ...] = (*(f"job.{status}" for status in JobStatus), BUDGET_ALERT, TEST)
ALL = "*"


@dataclass(frozen=True)
class Notice:
    """One thing that happened to one user's job, as webhooks and emails tell it."""

    event_id: str
    user_id: str
    type: str
    occurred_at: datetime
    data: dict[str, Any]

    def body(self) -> str:
        """The webhook's JSON body; the same bytes on every retry."""
        return orjson.dumps({"type": self.type, "timestamp": self.occurred_at.isoformat(), "data": self.data}).decode()


def status_notice(evt: JobStatusChanged) -> Notice:
    return Notice(evt.event_id, evt.user_id, f"job.{evt.status}", evt.occurred_at, {
        "job_id": evt.job_id,
        "job_name": evt.config.name if evt.config else None,
        "status": str(evt.status),
        "previous": str(evt.previous) if evt.previous else None,
        "reason": evt.reason,
        "provider": evt.provider,
        "cost": evt.cost.model_dump(mode="json") if evt.cost else None,
    })


def budget_notice(evt: BudgetAlert) -> Notice:
    return Notice(evt.event_id, evt.user_id, BUDGET_ALERT, evt.occurred_at, {
        "job_id": evt.job_id,
        "job_name": evt.job_name,
        "kind": str(evt.kind),
        "threshold_pct": evt.threshold_pct,
        "auto_stop_on_budget": evt.auto_stop_on_budget,
        "provider": evt.provider,
        "cost": evt.cost.model_dump(mode="json"),
    })


def webhook_test_notice(event_id: str, user_id: str, endpoint_id: str) -> Notice:
    return Notice(event_id, user_id, TEST, datetime.now(UTC), {
        "webhook_id": endpoint_id, "message": "A test event from TuneFleet: this webhook is reached."})

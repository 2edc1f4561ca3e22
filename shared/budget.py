"""A job's budget controls, as every deploy request spells them, and the arithmetic of what a job costs.

The field names are the specification's (its HF Spaces request): ``budget_limit`` (USD), ``alert_threshold``
(percent of the budget), ``notify_email`` and ``auto_stop_on_budget``; TuneFleet adds ``max_duration_hours``. They
apply to every provider.
"""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.events import JobCost

#: Enough to refuse what is plainly not an address; the mail server has the last word.
_EMAIL = re.compile(r"[^@\s\x00-\x1f]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
#: Below this much progress a projection is noise (the first steps include warm-up and compilation).
PROJECT_FROM_PROGRESS = 0.02


class BudgetControls(BaseModel):
    """What a deploy request may say of money and time."""

    model_config = ConfigDict(extra="forbid")

    budget_limit: float | None = Field(default=None, gt=0, description="USD. The job stops when its cost reaches "
                                                                        "this (unless auto_stop_on_budget is false).")
    alert_threshold: float | None = Field(
        default=None, gt=0, lt=100, description="Percent of budget_limit: crossing it publishes "
                                                "tunefleet.job.<id>.budget_alert once and notifies.")
    auto_stop_on_budget: bool = Field(default=True, description="False: reaching the budget only alerts, and the "
                                                                "job goes on.")
    max_duration_hours: float | None = Field(
        default=None, gt=0, le=24 * 30, description="Hours from when its machine was asked for; the job is then "
                                                    "stopped with its own reason.")
    notify_email: str | None = Field(default=None, max_length=254,
                                     description="Where this job's notifications are emailed.")

    def budget_controls(self) -> BudgetControls:
        """These fields alone (of a request that has more)."""
        return BudgetControls.model_validate(self.model_dump(include=set(BudgetControls.model_fields)))

    @field_validator("notify_email")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.fullmatch(value):
            raise ValueError(f"notify_email {value!r} is not an email address like name@example.com")
        return value

    @model_validator(mode="after")
    def _needs_budget(self) -> BudgetControls:
        if self.budget_limit is None:
            if self.alert_threshold is not None:
                raise ValueError("alert_threshold is a percentage of budget_limit: set budget_limit too")
            if not self.auto_stop_on_budget:
                raise ValueError("auto_stop_on_budget=false says what to do at budget_limit: set budget_limit too")
        return self


def job_cost(*, cost_per_hour: float | None, cost_so_far: float, budget_limit: float | None,
             progress: float | None, running_since: datetime | None, now: datetime) -> JobCost:
    """What a job has cost, and will cost at the pace it goes: so far plus the hourly price over the time the rest
    of its steps take at the rate of those done (``progress`` over the time since it started running)."""
    projected = None
    if progress is not None and progress >= 1.0:
        projected = cost_so_far
    elif progress is not None and progress >= PROJECT_FROM_PROGRESS and running_since is not None and cost_per_hour:
        elapsed_h = max((now - running_since).total_seconds(), 0.0) / 3600.0
        projected = cost_so_far + cost_per_hour * elapsed_h * (1.0 - progress) / progress
    remaining = max(budget_limit - cost_so_far, 0.0) if budget_limit is not None else None
    return JobCost(cost_per_hour=cost_per_hour, cost_so_far=round(cost_so_far, 6),
                   projected_total=round(projected, 6) if projected is not None else None,
                   budget_limit=budget_limit, budget_remaining=round(remaining, 6) if remaining is not None else None,
                   progress=progress)

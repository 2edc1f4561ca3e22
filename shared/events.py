"""Commands (imperative) and events (past tense) that travel over NATS.

Each is a frozen pydantic model whose envelope fields come first: ``event_id`` (also the JetStream
``Nats-Msg-Id``, so a re-published message is dropped by the server), ``occurred_at``, ``job_id``
and ``schema_version``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared import subjects
from shared.config import DataFormat, TrainingConfig
from shared.jobspec import TrainerResult
from shared.serving import Finding, ServerType, ServingOptions, ServingState
from shared.states import JobStatus


def _now() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: datetime = Field(default_factory=_now)
    job_id: str
    schema_version: int = 1

    @property
    def subject(self) -> str:  # pragma: no cover - every subclass defines it
        raise NotImplementedError


# Commands ---------------------------------------------------------------------------------------

class PlacementOffer(BaseModel):
    """One offer automatic placement may use: a provider and the options its deploy takes."""

    model_config = ConfigDict(frozen=True)
    provider: str
    gpu: str = Field(description="The offer's GPU or instance type, as its provider names it.")
    provider_options: dict[str, Any] = Field(default_factory=dict)
    cost_per_hour: float | None = None
    estimated_cost: float | None = None


class PlacementRejection(BaseModel):
    model_config = ConfigDict(frozen=True)
    provider: str
    gpu: str
    reason: str


class Placement(BaseModel):
    """Where automatic placement put a job: ``offers`` in the order tried (cheapest first), ``chosen`` the index in
    use, ``rejected`` every offer passed over and why (at deploy: too small, no capacity, no credentials; later: no
    capacity when its machine was asked for)."""

    model_config = ConfigDict(frozen=True)
    offers: list[PlacementOffer]
    chosen: int = 0
    rejected: list[PlacementRejection] = Field(default_factory=list)


class DeployRequested(Message):
    """A user asked for a training job (the gateway, once the request is stored); the scheduler makes it a job."""

    user_id: str
    provider: str
    config_id: str | None = None
    config: TrainingConfig
    dataset_path: str
    dataset_format: DataFormat
    dataset_rows: int
    provider_options: dict[str, Any] = Field(default_factory=dict)
    budget_limit_usd: float | None = None
    alert_threshold_pct: float | None = None
    auto_stop_on_budget: bool = True
    max_duration_hours: float | None = None
    notify_email: str | None = None
    placement: Placement | None = Field(default=None, description="Automatic placement: the offers to try.")

    @property
    def subject(self) -> str:
        return subjects.DEPLOY_REQUESTED


class StopRequested(Message):
    """A user asked to stop a job; the scheduler stops it, and tells its provider to end what it started."""

    user_id: str
    reason: str = "stopped by user"

    @property
    def subject(self) -> str:
        return subjects.STOP_REQUESTED


class ProvisionJob(Message):
    """Start the workload of one attempt. The provider composes the JobSpec for its own file layout."""

    provider: str
    user_id: str
    attempt: int = 1
    config: TrainingConfig
    dataset_path: str
    dataset_format: DataFormat
    provider_options: dict[str, Any] = Field(default_factory=dict)
    resume_from_checkpoint: str | None = None

    @property
    def subject(self) -> str:
        return subjects.provision(self.provider)


class TerminateJob(Message):
    """End the workload of a job and its resource (the scheduler, to the job's provider)."""

    provider: str
    user_id: str
    reason: str

    @property
    def subject(self) -> str:
        return subjects.terminate(self.provider)


# Events -----------------------------------------------------------------------------------------

class WorkloadPhase(StrEnum):
    PROVISIONING = "provisioning"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    PREEMPTED = "preempted"


class WorkloadReported(Message):
    """A provider's observation of one job's workload, already mapped to a phase."""

    provider: str
    attempt: int = 1
    phase: WorkloadPhase
    message: str | None = None
    exit_code: int | None = None
    log_tail: str | None = None
    result: TrainerResult | None = None
    cost_usd: float | None = None
    cost_per_hour: float | None = Field(default=None, description="The resource's price, in USD per hour.")
    resource_id: str | None = None
    progress: float | None = Field(default=None, description="0..1: the trainer's steps done over steps planned.")
    no_capacity: bool = Field(default=False, description="A failure because the provider had no machine of the "
                                                         "kind asked for (another offer may have one).")

    @property
    def subject(self) -> str:
        return subjects.workload_reported(self.provider)


class WorkloadLogged(Message):
    """New lines of one attempt's log, as its provider read them from the workload's output: ``lines[i]`` is line
    ``first_line + i`` of the attempt (numbered from 1). Sent again after a crash with the same numbers, so that the
    one who stores them keeps each line once."""

    provider: str
    attempt: int = 1
    first_line: int = Field(ge=1)
    lines: list[str]

    @field_validator("lines")
    @classmethod
    def _printable(cls, lines: list[str]) -> list[str]:
        """A workload can print NUL; PostgreSQL text cannot hold it."""
        return [line.replace("\x00", "\ufffd") for line in lines]

    @property
    def subject(self) -> str:
        return subjects.workload_logged(self.provider)


class LogLine(BaseModel):
    model_config = ConfigDict(frozen=True)
    attempt: int
    number: int = Field(description="The line's number in its attempt's log, from 1.")
    text: str


class JobLogAppended(Message):
    """Lines of a job's log stored for the first time (the scheduler), batched: for live viewers (plain NATS)."""

    lines: list[LogLine]

    @property
    def subject(self) -> str:
        return subjects.job_log(self.job_id)


class JobCost(BaseModel):
    """What a job has cost and will cost: on the job's status and its cost and budget events."""

    model_config = ConfigDict(frozen=True)
    cost_per_hour: float | None = Field(default=None, description="USD per hour of its resource, as the provider "
                                                                  "bills it now.")
    cost_so_far: float = Field(default=0.0, description="USD billed so far.")
    projected_total: float | None = Field(
        default=None, description="USD: so far plus the hourly price over the time left at the current progress "
                                  "rate; null before there is progress to project from.")
    budget_limit: float | None = Field(default=None, description="USD, the job's budget_limit.")
    budget_remaining: float | None = Field(default=None, description="USD: budget_limit less cost_so_far, not "
                                                                     "below 0; null without a budget.")
    progress: float | None = Field(default=None, description="0..1: steps done over steps planned.")


class JobStatusChanged(Message):
    """A job moved from one status to another (the scheduler); terminal ones carry its configuration and result."""

    user_id: str
    provider: str
    previous: JobStatus | None
    status: JobStatus
    reason: str | None = None
    config: TrainingConfig | None = None
    dataset_rows: int | None = None
    result: TrainerResult | None = None
    cost_usd: float | None = None
    cost: JobCost | None = Field(default=None, description="The job's cost when its status changed.")
    notify_email: str | None = Field(default=None, description="The job's notify_email, on terminal statuses.")

    @property
    def subject(self) -> str:
        return subjects.job_status(self.job_id)


class JobCostUpdated(Message):
    """A running job's cost, published by the scheduler on each provider report that changes it."""

    user_id: str
    provider: str
    cost: JobCost

    @property
    def subject(self) -> str:
        return subjects.job_cost(self.job_id)


class BudgetAlertKind(StrEnum):
    THRESHOLD = "threshold"
    """The cost crossed ``alert_threshold`` percent of the budget (once per job)."""
    LIMIT_REACHED = "limit_reached"
    """The cost reached the budget and ``auto_stop_on_budget`` is false: the job goes on (once per job)."""


class BudgetAlert(Message):
    """A job's cost crossed its alert threshold, or reached its budget where auto_stop_on_budget is false: published
    by the scheduler on tunefleet.job.<id>.budget_alert, once per kind and job."""

    user_id: str
    provider: str
    kind: BudgetAlertKind
    threshold_pct: float | None = Field(default=None, description="The job's alert_threshold, percent of budget.")
    auto_stop_on_budget: bool = True
    notify_email: str | None = Field(default=None, description="Where the job's notifications go, if it names one.")
    job_name: str | None = None
    cost: JobCost

    @property
    def subject(self) -> str:
        return subjects.job_budget_alert(self.job_id)


class MetricPoint(BaseModel):
    model_config = ConfigDict(frozen=True)
    step: int
    epoch: float | None = None
    values: dict[str, float]
    recorded_at: datetime | None = None


class PredictionRecord(BaseModel):
    model_config = ConfigDict(frozen=True)
    step: int
    epoch: float | None = None
    sample_index: int
    prompt: str
    generated: str
    expected: str
    scores: dict[str, float] = Field(default_factory=dict, description="e.g. bleu, rouge_l against expected")

    @field_validator("prompt", "generated", "expected")
    @classmethod
    def _printable(cls, v: str) -> str:
        """A model can generate NUL; PostgreSQL text cannot hold it."""
        return v.replace("\x00", "\ufffd")


class MetricsAppended(Message):
    """Training metrics of a job as ingest stored them (plain NATS, for live viewers)."""

    attempt: int = 1
    metrics: list[MetricPoint]

    @property
    def subject(self) -> str:
        return subjects.job_metrics(self.job_id)


class PredictionsAppended(Message):
    """Sample predictions of a job, scored against the expected text, as ingest stored them (plain NATS)."""

    attempt: int = 1
    predictions: list[PredictionRecord]

    @property
    def subject(self) -> str:
        return subjects.job_predictions(self.job_id)


class ModelRegistered(Message):
    """A completed job's model is in the registry (the model registry)."""

    model_id: str
    user_id: str
    name: str
    base_model: str
    adapter_path: str | None
    method: str
    lora_r: int | None
    lora_alpha: int | None
    final_loss: float | None
    training_seconds: float | None
    dataset_rows: int | None
    cost_usd: float | None
    version: int = Field(default=1, description="Models of one name are numbered 1, 2, ... per user.")

    @property
    def subject(self) -> str:
        return subjects.MODEL_REGISTERED


class ServeRequested(Message):
    """Serve a registered model (the gateway, or the registry for a job whose configuration says ``serve``)."""

    serving_id: str
    user_id: str
    model_id: str
    name: str = Field(description="The model name callers use on /v1.")
    server_type: ServerType
    adapter_path: str | None = Field(description="The adapter (or checkpoint) folder to serve; None serves the "
                                     "full fine-tuned model at model_path.")
    model_path: str | None = None
    base_model: str
    options: ServingOptions = ServingOptions()

    @property
    def subject(self) -> str:
        return subjects.SERVE_REQUESTED


class ServeStopRequested(Message):
    serving_id: str
    user_id: str

    @property
    def subject(self) -> str:
        return subjects.SERVE_STOP


class ServingChanged(Message):
    """A serving is ready (its engine answered the smoke prompt), failed (with the reason) or stopped."""

    serving_id: str
    user_id: str
    model_id: str
    name: str
    server_type: ServerType
    state: ServingState
    reason: str | None = None
    findings: list[Finding] = Field(default_factory=list)

    @property
    def subject(self) -> str:
        return subjects.serving_status(self.serving_id)

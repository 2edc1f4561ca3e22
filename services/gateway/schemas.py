"""Request and response bodies of the public API, kept apart from bus events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from shared.config import TrainingConfig


class ConfigurationPublic(BaseModel):
    id: str
    config: TrainingConfig
    created_at: datetime


class DatasetPublic(BaseModel):
    id: str
    filename: str
    format: str
    rows: int
    stats: dict[str, Any]


class DeploymentRequest(BaseModel):
    """What every deploy body shares. ``configuration_id`` names a saved configuration; ``config`` inlines one."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    configuration_id: str | None = Field(
        default=None, validation_alias=AliasChoices("configuration_id", "config_id", "training_config_id"))
    config: TrainingConfig | None = None
    budget_limit: float | None = Field(default=None, gt=0, description="Stop the job at this cost in USD.")


class LocalDeploymentRequest(DeploymentRequest):
    pass


class DeploymentResponse(BaseModel):
    job_id: str
    provider: str
    status: str
    pod_id: str = Field(description="The provider's id of the workload; for local, the job id.")
    message: str


class JobPublic(BaseModel):
    job_id: str
    name: str | None
    provider: str
    status: str
    status_reason: str | None = None
    attempt: int = 1
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: float | None = Field(default=None, description="0..1 from the latest step or epoch.")
    latest_metrics: dict[str, Any] | None = None
    logs_tail: str | None = None
    cost_usd: float = 0.0
    budget_limit_usd: float | None = None
    result: dict[str, Any] | None = None
    model_id: str | None = Field(default=None, description="The registered model, once there is one.")
    history: list[dict[str, Any]] = Field(default_factory=list)


class MetricsPage(BaseModel):
    job_id: str
    total_count: int
    metrics: list[dict[str, Any]]


class PredictionsPage(BaseModel):
    job_id: str
    predictions: list[dict[str, Any]]


class ModelPublic(BaseModel):
    id: str
    job_id: str
    name: str
    base_model: str
    adapter_path: str | None
    method: str
    lora_r: int | None
    lora_alpha: int | None
    final_loss: float | None
    final_eval_loss: float | None
    training_seconds: float | None
    dataset_rows: int | None
    cost_usd: float | None
    provider: str
    created_at: datetime

"""Request and response bodies of the public API, kept apart from bus events."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

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
    dataset_id: str | None = Field(
        default=None, description="The data set to train on, for a configuration that names none (as the "
                                  "specification's configurations do): an id from POST /api/training/datasets.")
    budget_limit: float | None = Field(default=None, gt=0, description="Stop the job at this cost in USD.")


class LocalDeploymentRequest(DeploymentRequest):
    pass


_IMAGE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RunPodDeploymentRequest(DeploymentRequest):
    gpu_type: str = Field(description="A RunPod GPU type id, e.g. 'NVIDIA A100 80GB PCIe'.")
    gpu_count: int = Field(default=1, ge=1, le=8)
    docker_image: str | None = Field(
        default=None, max_length=255,
        description="The pod's image; a stock PyTorch image by default. Any image with Python and pip works: "
                    "the bootstrap installs the trainer unless the image already has this TuneFleet's.")
    volume_size_gb: int | None = Field(
        default=None, ge=10, le=4000,
        description="The pod's volume (model cache, checkpoints, the trainer's venv); sized for the model when "
                    "unset.")
    environment_variables: dict[str, str] = Field(
        default_factory=dict, description="Set in the pod. Kept with the job as written: put secrets in "
                                          "secret_environment_variables.")
    secret_environment_variables: dict[str, str] = Field(
        default_factory=dict, description="Set in the pod too, but sealed at once with the providers' key: never "
                                          "stored, published or shown in plain text.")
    preflight: bool = Field(default=True, description="Dry-run the config on this machine's CPU first.")

    @field_validator("docker_image")
    @classmethod
    def _image_reference(cls, image: str | None) -> str | None:
        if image is not None and not _IMAGE.fullmatch(image):
            raise ValueError(f"docker_image {image!r} is not an image reference like 'pytorch/pytorch:2.8.0-cuda12.8-"
                             "cudnn9-runtime' or 'ghcr.io/you/trainer:tag'")
        return image

    @field_validator("environment_variables", "secret_environment_variables")
    @classmethod
    def _plain_env(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not _ENV_NAME.fullmatch(key) or key.upper().startswith("TUNEFLEET_"):
                raise ValueError(f"environment variable name {key!r} must be letters, digits and _ (not first a "
                                 "digit) and must not start with TUNEFLEET_")
            bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
            if bad is not None:
                raise ValueError(f"environment variable {key} holds a control character ({bad!r}: a newline, tab or "
                                 "the like), which a pod's environment cannot carry; put it on one line")
        return env

    @model_validator(mode="after")
    def _env_once(self) -> RunPodDeploymentRequest:
        both = sorted(set(self.environment_variables) & set(self.secret_environment_variables))
        if both:
            raise ValueError(f"environment variable {both[0]} is in both environment_variables and "
                             "secret_environment_variables; keep it in one")
        return self

    def provider_options(self) -> dict:
        """The options that travel with the job, secret environment values excepted (the route seals those)."""
        return self.model_dump(include={"gpu_type", "gpu_count", "docker_image", "volume_size_gb",
                                        "environment_variables"})


class LambdaDeploymentRequest(DeploymentRequest):
    instance_type: str = Field(description="A Lambda instance type, e.g. 'gpu_1x_a100_sxm4'.")
    region: str | None = Field(default=None, description="A region; the first with capacity when unset.")
    preflight: bool = Field(default=True, description="Dry-run the config on this machine's CPU first.")

    def provider_options(self) -> dict:
        return self.model_dump(include={"instance_type", "region"})


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
    resource_id: str | None = Field(default=None, description="The provider's id of the workload (a pod id …).")
    history: list[dict[str, Any]] = Field(default_factory=list)


class SeriesSummary(BaseModel):
    name: str
    raw_points: int = Field(description="Points of this metric that match the filters.")
    points: int = Field(description="Points of this metric in this answer.")


class Downsampling(BaseModel):
    method: str = Field("minmax", description="Per equal step range, the points with the minimum and the "
                                              "maximum value; plus the first and the last point.")
    max_points: int
    series: list[SeriesSummary]


class AttemptSpan(BaseModel):
    """Where one attempt's points lie in the job's curve."""

    attempt: int
    first_step: int = Field(description="The first step this attempt logged (1 when it started over).")
    superseded_from: int | None = Field(description="From this step on, the curve shows a later attempt's points "
                                                    "instead (read them all with ?attempt=N); None for the last.")


class MetricsPage(BaseModel):
    """One row per step: ``{step, attempt, epoch, recorded_at, <name>: value, ...}``, oldest first."""

    job_id: str
    total_count: int = Field(description="Rows in the whole answer: every page together, or with max_points "
                                         "the downsampled rows (all in this page).")
    metrics: list[dict[str, Any]]
    attempts: list[AttemptSpan] = Field(default_factory=list, description="The attempts that logged points.")
    downsampling: Downsampling | None = Field(default=None, description="Set when max_points was given.")


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

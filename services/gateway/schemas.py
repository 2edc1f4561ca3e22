"""Request and response bodies of the public API, kept apart from bus events."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from shared.budget import BudgetControls
from shared.catalogue import Catalogue, Offer
from shared.config import TrainingConfig
from shared.events import JobCost, LogLine, Placement
from shared.hub_models import HubModelCheck
from shared.serving import Finding, ServerType, ServingOptions, ServingState


class ConfigurationPublic(BaseModel):
    id: str
    config: TrainingConfig
    created_at: datetime
    updated_at: datetime
    hub_check: HubModelCheck | None = Field(default=None, description=(
        "What the Hugging Face Hub said of a hub base model when this was saved: verified (with the resolved "
        "revision, architecture, parameter count, gating) or skipped (the Hub could not be reached); null for a "
        "local model folder."))


class ConfigurationsPage(BaseModel):
    total_count: int
    limit: int
    offset: int
    configurations: list[ConfigurationPublic]


class DatasetPublic(BaseModel):
    id: str
    filename: str
    format: str
    rows: int
    stats: dict[str, Any] = Field(description="Rows, character lengths and the like, as the upload's check found.")
    created_at: datetime


class DatasetPreview(BaseModel):
    dataset_id: str
    format: str
    rows: list[dict[str, Any]] = Field(description="The data set's first rows, as the uploaded file holds them.")


class DatasetsPage(BaseModel):
    total_count: int
    limit: int
    offset: int
    datasets: list[DatasetPublic]


class DeploymentRequest(BudgetControls):
    """What every deploy body shares. ``configuration_id`` names a saved configuration; ``config`` inlines one.
    The budget controls (``budget_limit``, ``alert_threshold``, ``auto_stop_on_budget``, ``max_duration_hours``,
    ``notify_email``) apply to every provider."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    configuration_id: str | None = Field(
        default=None, validation_alias=AliasChoices("training_config_id", "configuration_id", "config_id"),
        description="A saved configuration's id (the specification's name; configuration_id and config_id are "
                    "taken too).")
    config: TrainingConfig | None = None
    dataset_id: str | None = Field(
        default=None, description="The data set to train on, for a configuration that names none (as the "
                                  "specification's configurations do): an id from POST /api/training/datasets.")


class LocalDeploymentRequest(DeploymentRequest):
    pass


_IMAGE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RunPodDeploymentRequest(DeploymentRequest):
    """The specification's ``RunPodDeploymentRequest``, with TuneFleet's additions."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"training_config_id": "cfg_abc123", "gpu_type": "NVIDIA A100 80GB PCIe", "gpu_count": 1,
         "volume_size_gb": 50, "budget_limit": 100}]})
    gpu_type: str = Field(description="A RunPod GPU type id, e.g. 'NVIDIA A100 80GB PCIe', or 'auto': the one where "
                                      "the whole run costs least.")
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
    instance_type: str = Field(description="A Lambda instance type, e.g. 'gpu_1x_a100_sxm4', or 'auto': the one "
                                           "where the whole run costs least.")
    region: str | None = Field(default=None, description="A region; the first with capacity when unset.")
    preflight: bool = Field(default=True, description="Dry-run the config on this machine's CPU first.")

    def provider_options(self) -> dict:
        return self.model_dump(include={"instance_type", "region"})


_KAGGLE_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/[A-Za-z0-9][A-Za-z0-9_.-]{2,99}(/versions/\d+)?")
#: Kaggle's accelerators as kernel-metadata.json names them (kaggle 2.2's kernels push docs).
KAGGLE_MACHINE_SHAPES = ("NvidiaTeslaT4", "NvidiaTeslaP100", "NvidiaL4", "NvidiaL4X1", "TpuV38", "TpuV5E8", "None")


class KaggleDeploymentRequest(DeploymentRequest):
    """The specification's ``KaggleDeploymentRequest``, with ``machine_shape`` and ``model_sources``."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"training_config_id": "cfg_abc123", "notebook_title": "Fine-tune TinyLlama", "enable_gpu": True,
         "enable_internet": True, "machine_shape": "NvidiaTeslaT4"}]})
    notebook_title: str = Field(min_length=5, max_length=50, description="The kernel's title (5 to 50 characters).")
    is_private: bool = Field(default=True, description="A private kernel (the default): only you see it.")
    dataset_sources: list[str] = Field(default_factory=list, max_length=20, description=(
        "Kaggle datasets to attach, as owner/dataset-slug; they appear under /kaggle/input/<slug>."))
    model_sources: list[str] = Field(default_factory=list, max_length=10, description=(
        "Kaggle models to attach (owner/model/framework/variation[/version]): with enable_internet false, the base "
        "model must come from here or from dataset_sources."))
    enable_gpu: bool = Field(default=True, description="Run on a GPU (counts against Kaggle's weekly GPU hours).")
    enable_internet: bool = Field(default=True, description=(
        "Let the kernel reach the internet: metrics arrive live and the base model can come from the Hub. Without "
        "it, the job's files travel as a private Kaggle dataset and metrics arrive when the kernel ends."))
    machine_shape: str | None = Field(default=None, description=(
        f"Kaggle's accelerator: one of {', '.join(KAGGLE_MACHINE_SHAPES)}; Kaggle's default GPU when unset."))
    preflight: bool = Field(default=True, description="Dry-run the config on this machine's CPU first.")

    @field_validator("dataset_sources")
    @classmethod
    def _dataset_slugs(cls, sources: list[str]) -> list[str]:
        for source in sources:
            if not _KAGGLE_SLUG.fullmatch(source):
                raise ValueError(f"dataset_sources entry {source!r} is not owner/dataset-slug, e.g. "
                                 "'alice/my-model-weights'")
        return sources

    @field_validator("model_sources")
    @classmethod
    def _model_slugs(cls, sources: list[str]) -> list[str]:
        for source in sources:
            parts = source.split("/")
            if not 4 <= len(parts) <= 5 or not all(parts) or any(c.isspace() for c in source):
                raise ValueError(f"model_sources entry {source!r} is not owner/model/framework/variation[/version], "
                                 "e.g. 'google/gemma/transformers/2b'")
        return sources

    @field_validator("machine_shape")
    @classmethod
    def _shape(cls, shape: str | None) -> str | None:
        if shape is not None and shape not in KAGGLE_MACHINE_SHAPES:
            raise ValueError(f"machine_shape {shape!r} is not a Kaggle accelerator; use one of "
                             f"{', '.join(KAGGLE_MACHINE_SHAPES)}")
        return shape

    def provider_options(self) -> dict:
        return self.model_dump(include={"notebook_title", "is_private", "dataset_sources", "model_sources",
                                        "enable_gpu", "enable_internet", "machine_shape"})


_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(f"{_REPO_PART}/{_REPO_PART}")
#: Spaces hardware flavours (huggingface_hub's SpaceHardware), GPUs and the CPU ones.
HF_SPACE_TIERS = ("cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4", "l40sx8",
                  "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "a100x4", "a100x8")


class HFSpacesDeploymentRequest(DeploymentRequest):
    """The specification's ``HFSpacesDeploymentRequest``, with ``delete_on_finish`` and ``push_to_hub``. The budget
    fields behave as on every provider."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"training_config_id": "cfg_abc123", "space_name": "alice/tunefleet-run", "gpu_tier": "t4-small",
         "budget_limit": 5, "alert_threshold": 80, "push_to_hub": "alice/my-adapter"}]})
    space_name: str = Field(description="owner/name of the Space to create: your user name or an organisation you "
                                        "can write to.")
    visibility: Literal["private", "public"] = Field(default="private")
    gpu_tier: str = Field(default="t4-small", description=f"Spaces hardware: one of {', '.join(HF_SPACE_TIERS)}.")
    delete_on_finish: bool = Field(default=False, description="Delete the Space once the job ends; else it is left "
                                                              "paused (paused Spaces cost nothing).")
    push_to_hub: str | None = Field(default=None, description="A model repo (owner/name) to push the adapter to "
                                                              "as well; created private if missing.")
    preflight: bool = Field(default=True, description="Dry-run the config on this machine's CPU first.")

    @field_validator("space_name", "push_to_hub")
    @classmethod
    def _repo_id(cls, repo: str | None, info) -> str | None:
        if repo is not None and (not _REPO_ID.fullmatch(repo) or "--" in repo or ".." in repo):
            raise ValueError(f"{info.field_name} {repo!r} is not owner/name (letters, digits, '-', '_', '.'; at most "
                             "96 characters each), e.g. 'alice/tunefleet-run'")
        return repo

    @field_validator("gpu_tier")
    @classmethod
    def _tier(cls, tier: str) -> str:
        if tier not in HF_SPACE_TIERS:
            raise ValueError(f"gpu_tier {tier!r} is not Spaces hardware; use one of {', '.join(HF_SPACE_TIERS)}")
        return tier

    def provider_options(self) -> dict:
        return self.model_dump(include={"space_name", "visibility", "gpu_tier", "delete_on_finish", "push_to_hub"})


class AutoDeploymentRequest(DeploymentRequest):
    """Automatic placement: the cheapest offer that fits, among the providers whose credentials are stored."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"training_config_id": "cfg_abc123", "provider": "auto", "gpu_type": "auto", "budget_limit": 20,
         "alert_threshold": 80, "max_duration_hours": 6}]})
    provider: Literal["auto", "runpod", "lambda"] = Field(default="auto", description="auto: every provider with "
                                                                                      "stored credentials.")
    gpu_type: Literal["auto"] = Field(default="auto", description="Always auto here; deploy to a provider's route to "
                                                                  "name a GPU.")
    max_usd_per_hour: float | None = Field(default=None, gt=0, description="Pass over offers dearer than this.")
    preflight: bool = Field(default=True, description="Dry-run the config on this machine's CPU first.")


class GpuCatalogue(BaseModel):
    offers: list[Offer] = Field(description="Every provider's offers, cheapest first.")
    providers: list[Catalogue] = Field(description="Per provider: when its offers were read, whether they are the "
                                                   "last known (stale), or why there are none (offers left out).")


class EstimateRequest(DeploymentRequest):
    """A configuration (saved or inline) and its data set, and optionally one offer to estimate on."""

    provider: str | None = Field(default=None, description="Only this provider's offers.")
    gpu_type: str | None = Field(default=None, description="One offer of GET /api/gpus (a RunPod GPU type, a "
                                                            "Lambda instance type ...); every offer when unset.")


class EstimateCandidate(BaseModel):
    provider: str
    gpu_type: str
    description: str
    gpu_count: int = Field(description="GPUs the job trains on (training.gpu_count): data-parallel, each holds a "
                                       "whole copy of the job.")
    vram_gib: float = Field(description="Per GPU.")
    tflops_16bit: float = Field(description="Dense 16-bit tensor TFLOPS per GPU (vendor datasheet).")
    fits: bool
    reason: str | None = Field(default=None, description="Why it does not fit, and what to change.")
    hours: float = Field(description="Training time at the stated efficiency.")
    usd_per_hour: float | None
    cost_usd: float | None = Field(description="hours x usd_per_hour.")
    capacity: bool | None


class EstimateResponse(BaseModel):
    """Peak GPU memory by part, tokens, FLOPs and, per offer, whether the job fits, how long it takes and what it
    costs (fitting offers first, cheapest first)."""

    model: dict[str, Any]
    data: dict[str, Any]
    memory: dict[str, Any]
    flops: float
    candidates: list[EstimateCandidate]
    assumptions: list[str]


class DeploymentCost(BaseModel):
    """The specification's ``DeploymentCost``."""

    estimated_cost: float | None = Field(
        default=None, description="USD: the projected total at the current speed (cost so far over progress); the "
                                  "final cost once the job has ended; null while there is no progress to project.")
    cost_per_hour: float | None = Field(default=None, description="USD per hour of the job's resource, once known "
                                                                  "(0 for local jobs).")
    actual_cost: float | None = Field(default=None, description="USD: the final cost, null until the job has ended.")


class DeploymentMetrics(BaseModel):
    """The newest training figures, as the specification's status shows them."""

    epoch: float | None = None
    step: int | None = None
    loss: float | None = None
    learning_rate: float | None = None
    progress_percentage: float | None = Field(default=None, description="0..100, from the step or the epoch.")


class DeploymentFields(BaseModel):
    """What the specification's deployment answers carry, on every deploy answer and job status."""

    deployment_id: str = Field(description="TuneFleet's id of the deployment: the job id.")
    pod_id: str = Field(description="The provider's id of the workload once it exists (the pod, the instance; for "
                                    "a local job its trainer process, as pid:start time); the job id before that.")
    pod_url: str | None = Field(default=None, description="Where the workload can be seen: the provider console's "
                                                          "page for it, or this gateway's job for local jobs.")
    status: str = Field(description="TuneFleet's status (see the states table in the README).")
    deployment_status: str = Field(description="The specification's DeploymentStatus for it: queued, creating, "
                                               "running, completed or failed.")
    gpu_type: str | None = Field(default=None, description="The GPU (RunPod) or instance type (Lambda) asked for; "
                                                           "null for local jobs.")
    gpu_count: int = 1
    cost: DeploymentCost = Field(default_factory=DeploymentCost)
    created_at: datetime


class DeploymentResponse(DeploymentFields):
    """The answer to a deploy: the specification's ``RunPodDeploymentResponse`` and the like."""

    job_id: str
    provider: str
    message: str
    placement: Placement | None = Field(default=None, description="Automatic placement: where the job was put, the "
                                                                  "offers to fall back on and those passed over.")


class JobPublic(DeploymentFields):
    """A job's unified status; also the answer of ``GET /api/training/deploy/{provider}?pod_id=`` (the
    specification's ``RunPodDeploymentStatus``)."""

    job_id: str
    name: str | None
    provider: str
    status_reason: str | None = None
    attempt: int = 1
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: float | None = Field(default=None, description="0..1 from the latest step or epoch.")
    latest_metrics: dict[str, Any] | None = None
    metrics: DeploymentMetrics = Field(default_factory=DeploymentMetrics)
    logs_tail: str | None = None
    logs: str | None = Field(default=None, description="The newest lines of the workload's log (as logs_tail).")
    cost_usd: float = 0.0
    budget_limit_usd: float | None = None
    live_cost: JobCost = Field(default_factory=JobCost, description="Cost per hour as the provider bills it now, "
                                                                    "so far, projected, and the budget remaining.")
    budget: BudgetControls = Field(default_factory=BudgetControls, description="The job's budget controls.")
    placement: Placement | None = Field(default=None, description="Automatic placement: the offers in the order "
                                                                  "tried, the one in use, and every offer passed "
                                                                  "over with why.")
    result: dict[str, Any] | None = None
    model_id: str | None = Field(default=None, description="The registered model, once there is one.")
    resource_id: str | None = Field(default=None, description="The provider's id of the workload (a pod id …).")
    history: list[dict[str, Any]] = Field(default_factory=list)


class JobError(BaseModel):
    """The specification's ``training_errors`` record, per attempt."""

    attempt: int
    phase: str = Field(description="How the attempt ended: failed or preempted.")
    error_type: str = Field(description="The exception's class (OutOfMemoryError, ConfigRefused ...), or what the "
                                        "provider saw (WorkloadFailed, Preempted).")
    error_message: str
    error_field: str | None = Field(default=None, description="The configuration field a refusal names.")
    traceback: str | None = None
    occurred_at: datetime

    @computed_field  # the specification's name
    @property
    def timestamp(self) -> datetime:
        return self.occurred_at


class JobErrors(BaseModel):
    job_id: str
    errors: list[JobError]


class JobLogPage(BaseModel):
    job_id: str
    lines: list[LogLine] = Field(description="In order: attempt by attempt, each attempt's lines by number.")
    next_after: str | None = Field(description="Give it as ``after`` for the lines that follow (those written since, "
                                               "when this page was the end); null when there were none to follow.")
    total: int = Field(description="Lines of the log that match attempt and q, on every page.")


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
    """One row per step: ``{step, attempt, epoch, recorded_at, timestamp, <name>: value, ...}``, oldest first. Metrics
    logged under transformers' names appear under the specification's too: ``grad_norm`` as ``gradient_norm``,
    ``samples_per_second`` as ``samples_per_sec``, ``gpu_memory_allocated_mb`` as ``gpu_memory_mb``."""

    job_id: str
    total_count: int = Field(description="Rows in the whole answer: every page together, or with max_points "
                                         "the downsampled rows (all in this page).")
    metrics: list[dict[str, Any]]
    attempts: list[AttemptSpan] = Field(default_factory=list, description="The attempts that logged points.")
    downsampling: Downsampling | None = Field(default=None, description="Set when max_points was given.")


class PredictionMetrics(BaseModel):
    bleu: float | None = Field(default=None, description="sacreBLEU of generated against expected, 0..100.")
    rouge_l: float | None = Field(default=None, description="ROUGE-L F1 of generated against expected, 0..1.")


class PredictionPublic(BaseModel):
    """A sample the model generated during training: the specification's prediction, with its attempt."""

    sample_id: str = Field(description="sample_<sample_index>: the same held-out sample at every step.")
    sample_index: int
    step: int
    attempt: int
    epoch: float | None
    prompt: str
    generated: str
    expected: str | None
    metrics: PredictionMetrics
    scores: dict[str, float] = Field(default_factory=dict, description="Every score computed (metrics' source).")
    created_at: datetime
    timestamp: datetime


class PredictionsPage(BaseModel):
    job_id: str
    predictions: list[PredictionPublic]


class LoraAdapter(BaseModel):
    path: str | None
    r: int | None
    alpha: int | None


class ModelAdapters(BaseModel):
    lora: LoraAdapter | None = Field(default=None, description="Null for a full fine-tune.")


class ModelMetadata(BaseModel):
    training_method: str
    final_loss: float | None
    training_time_hours: float | None
    dataset_size: int | None
    total_cost_usd: float | None


class ModelPublic(BaseModel):
    """A registered model: the specification's ``llm_models`` entry (``model_type`` … ``metadata``) with TuneFleet's
    own fields beside it."""

    id: str
    user_id: str
    model_type: str = "causal_lm"
    source: str = "training_job"
    source_job_id: str
    adapters: ModelAdapters
    metadata: ModelMetadata
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
    version: int = Field(default=1, description="Models of one name are numbered 1, 2, ... (per user).")
    dataset_id: str | None = None
    config: dict | None = Field(default=None, description="The configuration the model was trained with.")
    created_at: datetime

    @classmethod
    def from_row(cls, row) -> ModelPublic:
        r = dict(row)
        lora = LoraAdapter(path=r["adapter_path"], r=r["lora_r"], alpha=r["lora_alpha"]) if r["lora_r"] else None
        hours = None if r["training_seconds"] is None else round(r["training_seconds"] / 3600.0, 6)
        return cls(**{**r, "id": str(r["id"]), "job_id": str(r["job_id"])}, source_job_id=str(r["job_id"]),
                   adapters=ModelAdapters(lora=lora),
                   metadata=ModelMetadata(training_method=r["method"], final_loss=r["final_loss"],
                                          training_time_hours=hours, dataset_size=r["dataset_rows"],
                                          total_cost_usd=r["cost_usd"]))


class CostGroup(BaseModel):
    key: str = Field(description="The provider, the day (YYYY-MM-DD, UTC) or the job id.")
    name: str | None = Field(default=None, description="The job's name (group_by=job).")
    status: str | None = Field(default=None, description="The job's status (group_by=job).")
    jobs: int
    running: int = Field(description="Jobs not ended yet: their cost so far is counted.")
    cost_usd: float


class CostReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    start: datetime = Field(alias="from", serialization_alias="from")
    end: datetime = Field(alias="to", serialization_alias="to")
    group_by: str
    currency: str
    total_usd: float
    jobs: int
    groups: list[CostGroup]


class ServingDeployRequest(BaseModel):
    """``POST /api/training/deploy``: serve a registered model (the specification's body)."""

    model_config = ConfigDict(extra="forbid")
    job_id: uuid.UUID | None = Field(default=None, description="The completed job whose model to serve.")
    model_id: uuid.UUID | None = Field(default=None, description="The registered model to serve.")
    server_type: ServerType = Field(description="vllm, ollama or builtin.")
    name: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
                             description="The model name callers use on /v1; default: the model's name.")
    checkpoint_path: str | None = Field(default=None, description="Serve one of the job's checkpoints instead of the "
                                        "final adapter: its folder, e.g. checkpoints/checkpoint-20 (relative to the "
                                        "job's output), as GET /api/training/jobs/{id}/checkpoints lists them.")
    config: ServingOptions = ServingOptions()

    @model_validator(mode="after")
    def _one_model(self) -> ServingDeployRequest:
        if (self.job_id is None) == (self.model_id is None):
            raise ValueError("give exactly one of job_id and model_id (GET /api/models lists your models)")
        return self


class ServingEngine(BaseModel):
    base_url: str | None = Field(description="The engine's own OpenAI base URL (reachable from this server).")
    model: str | None = Field(description="The model name the engine knows it by.")
    details: dict = Field(description="What the engine reports: process id, port, --max-lora-rank, smoke answer.")


class ServingPublic(BaseModel):
    id: str
    model_id: str
    name: str = Field(description="The model name to send to base_url.")
    server_type: ServerType
    state: ServingState
    reason: str | None = Field(description="Why it failed or stopped.")
    base_url: str = Field(description="The OpenAI-compatible base URL to call with your API key (the gateway's /v1).")
    engine: ServingEngine
    findings: list[Finding] = Field(description="What the checks of the adapter found (warnings, or the errors).")
    stop_requested: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row, public_url: str) -> ServingPublic:
        r = dict(row)
        return cls(id=str(r["id"]), model_id=str(r["model_id"]), name=r["name"], server_type=r["server_type"],
                   state=r["state"], reason=r["reason"], base_url=f"{public_url.rstrip('/')}/v1",
                   engine=ServingEngine(base_url=r["base_url"], model=r["engine_model"], details=r["details"] or {}),
                   findings=r["findings"] or [], stop_requested=r["stop_requested_at"] is not None,
                   created_at=r["created_at"], updated_at=r["updated_at"])

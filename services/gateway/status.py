"""A job's status as the API shows it: TuneFleet's own fields and the specification's deployment fields, from the
scheduler's row (or the gateway's record of a deploy not yet scheduled) and the newest metrics."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared.budget import BudgetControls, job_cost
from shared.config import TrainingConfig
from shared.events import JobCost, Placement
from shared.settings import Settings
from shared.states import DOCUMENTED_STATUS, JobStatus

from . import views
from .schemas import DeploymentCost, DeploymentMetrics, DeploymentResponse, JobPublic

#: Where a provider's console lists its workloads (neither exposes a page per workload that TuneFleet can link).
CONSOLE_URLS = {"runpod": "https://console.runpod.io/pods", "lambda": "https://cloud.lambda.ai/instances",
                "kaggle": "https://www.kaggle.com/work/code", "hfspaces": "https://huggingface.co/spaces"}


def pod_url(settings: Settings, provider: str, job_id: str, resource_id: str | None) -> str | None:
    """The specification's ``pod_url``: this gateway's job for a local job, else the console of the provider
    once the workload exists there."""
    if provider == "local":
        return f"{settings.public_url.rstrip('/')}/api/training/jobs/{job_id}"
    return CONSOLE_URLS.get(provider) if resource_id else None


#: A Lambda instance type says its GPU count: ``gpu_8x_a100_80gb_sxm4``.
_LAMBDA_GPUS = re.compile(r"gpu_(\d+)x_")


def gpu_of(provider: str, options: dict[str, Any], config: TrainingConfig | None) -> tuple[str | None, int]:
    """The GPU (or instance type) and the GPU count a job asked for."""
    instance = _LAMBDA_GPUS.match(options.get("instance_type") or "")
    count = options.get("gpu_count") or (int(instance.group(1)) if instance else None) or (
        config.training.gpu_count if config else 1)
    gpu = (options.get("gpu_type") or options.get("instance_type") or options.get("gpu_tier")
           or options.get("machine_shape"))
    return gpu, int(count)


def progress(status: str | None, config: TrainingConfig | None, latest: dict | None) -> float | None:
    """0..1 from the newest step (against max_steps) or epoch (against the epochs asked for)."""
    if status == JobStatus.COMPLETED:
        return 1.0
    if not latest or config is None:
        return None
    if config.training.max_steps:
        return min(1.0, latest["step"] / config.training.max_steps)
    if latest.get("epoch") is not None:
        return min(1.0, latest["epoch"] / config.training.epochs)
    return None


def cost(status: str | None, live: JobCost) -> DeploymentCost:
    ended = status is not None and JobStatus(status).is_terminal
    return DeploymentCost(estimated_cost=live.cost_so_far if ended else live.projected_total,
                          cost_per_hour=live.cost_per_hour, actual_cost=live.cost_so_far if ended else None)


def budget_controls(row: dict[str, Any], message: dict[str, Any]) -> BudgetControls:
    """The job's budget controls, from the scheduler's row, or the deploy as the gateway stored it."""
    source = row if "status" in row else message
    return BudgetControls(budget_limit=source.get("budget_limit_usd"), alert_threshold=source.get(
        "alert_threshold_pct"), auto_stop_on_budget=source.get("auto_stop_on_budget", True),
        max_duration_hours=source.get("max_duration_hours"), notify_email=source.get("notify_email"))


def _metrics(latest: dict | None, done: float | None) -> DeploymentMetrics:
    latest = latest or {}
    return DeploymentMetrics(epoch=latest.get("epoch"), step=latest.get("step"), loss=latest.get("loss"),
                             learning_rate=latest.get("learning_rate"),
                             progress_percentage=None if done is None else round(100.0 * done, 2))


async def job_public(pool: asyncpg.Pool, settings: Settings, user: str, job_id: str) -> JobPublic:
    row = dict(await views.job_row(pool, user, job_id))
    scheduled = "status" in row  # else only the gateway's record of the deploy exists
    message = row.get("message") or {}
    config_raw = row.get("config") or message.get("config")
    config = TrainingConfig.model_validate(config_raw) if config_raw else None
    options = row.get("provider_options") or message.get("provider_options") or {}
    status = row.get("status", JobStatus.QUEUED.value)
    latest = await views.latest_metrics(pool, job_id)
    done = progress(status, config, latest)
    gpu_type, gpu_count = gpu_of(row["provider"], options, config)
    cost_usd = row.get("cost_usd") or 0.0
    resource_id = row.get("resource_id")
    per_hour = row.get("cost_per_hour")
    if per_hour is None and row["provider"] == "local":
        per_hour = 0.0  # this machine costs nothing by the hour (before the provider's first report says so)
    budget = budget_controls(row, message)
    live = job_cost(cost_per_hour=per_hour, cost_so_far=cost_usd, budget_limit=budget.budget_limit,
                    progress=row.get("progress") if row.get("progress") is not None else done,
                    running_since=row.get("started_at"), now=datetime.now(UTC))
    placement = row.get("placement") or message.get("placement")
    return JobPublic(
        job_id=str(row["id"]), deployment_id=str(row["id"]), pod_id=resource_id or str(row["id"]),
        pod_url=pod_url(settings, row["provider"], str(row["id"]), resource_id), gpu_type=gpu_type,
        gpu_count=gpu_count, name=row.get("name"), provider=row["provider"], status=status,
        deployment_status=DOCUMENTED_STATUS[JobStatus(status)],
        status_reason=row.get("status_reason") or (None if scheduled else "accepted; waiting for the scheduler"),
        attempt=row.get("attempt", 1), created_at=row["created_at"], started_at=row.get("started_at"),
        finished_at=row.get("finished_at"), progress=done, latest_metrics=latest, metrics=_metrics(latest, done),
        logs_tail=row.get("log_tail"), logs=row.get("log_tail"), cost_usd=cost_usd,
        cost=cost(status, live), budget_limit_usd=budget.budget_limit, live_cost=live, budget=budget,
        placement=Placement.model_validate(placement) if placement else None, result=row.get("result"),
        model_id=await views.model_id_for_job(pool, job_id) if status == JobStatus.COMPLETED else None,
        resource_id=resource_id,
        history=await views.history(pool, job_id) if scheduled else [],
    )


def deployment_response(settings: Settings, job_id: str, provider: str, options: dict[str, Any],
                        config: TrainingConfig, created_at: datetime) -> DeploymentResponse:
    """The answer to an accepted deploy: queued, with no resource yet."""
    gpu_type, gpu_count = gpu_of(provider, options, config)
    return DeploymentResponse(
        job_id=job_id, deployment_id=job_id, pod_id=job_id, pod_url=pod_url(settings, provider, job_id, None),
        provider=provider, status=JobStatus.QUEUED.value, deployment_status=DOCUMENTED_STATUS[JobStatus.QUEUED],
        gpu_type=gpu_type, gpu_count=gpu_count,
        cost=DeploymentCost(cost_per_hour=0.0 if provider in ("local", "kaggle") else None), created_at=created_at,
        message=f"deploy accepted; follow GET /api/training/jobs/{job_id}")

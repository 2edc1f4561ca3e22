from __future__ import annotations

import uuid

from fastapi import APIRouter, Query

from shared.config import TrainingConfig
from shared.events import StopRequested
from shared.outbox import Outbox
from shared.states import JobStatus

from .. import queries
from ..deploying import OUTBOX
from ..deps import BusDep, CurrentUser, PoolDep
from ..schemas import JobPublic

router = APIRouter(prefix="/api/training/jobs", tags=["jobs"])


def _progress(row, latest: dict | None) -> float | None:
    if row.get("status") == JobStatus.COMPLETED:
        return 1.0
    if not latest or "config" not in row:
        return None
    training = TrainingConfig.model_validate(row["config"]).training
    if training.max_steps:
        return min(1.0, latest["step"] / training.max_steps)
    if latest.get("epoch") is not None:
        return min(1.0, latest["epoch"] / training.epochs)
    return None


async def job_public(pool: PoolDep, user: str, job_id: str) -> JobPublic:
    row = dict(await queries.job_row(pool, user, job_id))
    latest = await queries.latest_metrics(pool, job_id)
    return JobPublic(
        job_id=str(row["id"]), name=row.get("name"), provider=row["provider"],
        status=row.get("status", JobStatus.QUEUED.value),
        status_reason=row.get("status_reason") or ("accepted; waiting for the scheduler"
                                                   if "status" not in row else None),
        attempt=row.get("attempt", 1), created_at=row["created_at"], started_at=row.get("started_at"),
        finished_at=row.get("finished_at"), progress=_progress(row, latest), latest_metrics=latest,
        logs_tail=row.get("log_tail"), cost_usd=row.get("cost_usd") or 0.0,
        budget_limit_usd=row.get("budget_limit_usd"), result=row.get("result"),
        model_id=await queries.model_id_for_job(pool, job_id) if row.get("status") == JobStatus.COMPLETED else None,
        resource_id=row.get("resource_id"),
        history=await queries.history(pool, job_id) if "status" in row else [],
    )


@router.get("", response_model=list[JobPublic])
async def list_jobs(user: CurrentUser, pool: PoolDep, limit: int = Query(50, ge=1, le=500)) -> list[JobPublic]:
    ids = await pool.fetch(
        "SELECT job_id FROM deploy_requests WHERE user_id = $1 ORDER BY created_at DESC LIMIT $2", user, limit)
    return [await job_public(pool, user, str(r["job_id"])) for r in ids]


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep) -> JobPublic:
    """Unified status: state, reason, progress, latest metrics, log tail, cost and history."""
    return await job_public(pool, user, str(job_id))


@router.post("/{job_id}/stop", status_code=202, response_model=JobPublic)
async def stop_job(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep, bus: BusDep) -> JobPublic:
    """Ask the scheduler to stop the job; it ends ``stopped`` once the provider has ended the workload. The request
    is stored before the answer, so it reaches the scheduler even if NATS is away now."""
    job = await job_public(pool, user, str(job_id))
    if not JobStatus(job.status).is_terminal:
        stop, outbox = StopRequested(job_id=str(job_id), user_id=user), Outbox(pool, OUTBOX)
        async with pool.acquire() as conn:
            await outbox.put(conn, stop)
        await outbox.send(bus.publish, stop)
    return job

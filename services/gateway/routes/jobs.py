from __future__ import annotations

import uuid

from fastapi import APIRouter, Query

from shared.events import StopRequested
from shared.outbox import Outbox
from shared.states import JobStatus

from .. import repository, views
from ..deploying import OUTBOX
from ..deps import BusDep, CurrentUser, PoolDep, SettingsDep
from ..schemas import JobErrors, JobPublic
from ..status import job_public

router = APIRouter(prefix="/api/training/jobs", tags=["jobs"])


@router.get("", response_model=list[JobPublic])
async def list_jobs(user: CurrentUser, pool: PoolDep, settings: SettingsDep, limit: int = Query(50, ge=1, le=500),
                    offset: int = Query(0, ge=0)) -> list[JobPublic]:
    """Your jobs, newest first."""
    return [await job_public(pool, settings, user, job_id)
            for job_id in await repository.deploy_ids(pool, user, limit, offset)]


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep, settings: SettingsDep) -> JobPublic:
    """Unified status: state, reason, progress, latest metrics, log tail, cost and history, with the
    specification's deployment fields (``deployment_id``, ``pod_id``, ``pod_url``, ``logs``, ``metrics``, ``cost``)."""
    return await job_public(pool, settings, user, str(job_id))


@router.get("/{job_id}/errors", response_model=JobErrors)
async def get_job_errors(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep) -> JobErrors:
    """Why each attempt failed or was preempted, oldest first: the error's type, message and traceback (when the
    trainer raised one), the configuration field it names, and when. Kept when a retry follows."""
    await views.ensure_job_visible(pool, user, str(job_id))
    return JobErrors(job_id=str(job_id), errors=await views.job_errors(pool, str(job_id)))


@router.post("/{job_id}/stop", status_code=202, response_model=JobPublic)
async def stop_job(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep, bus: BusDep,
                   settings: SettingsDep) -> JobPublic:
    """Ask the scheduler to stop the job; it ends ``stopped`` once the provider has ended the workload. The request
    is stored before the answer, so it reaches the scheduler even if NATS is away now."""
    job = await job_public(pool, settings, user, str(job_id))
    if not JobStatus(job.status).is_terminal:
        stop, outbox = StopRequested(job_id=str(job_id), user_id=user), Outbox(pool, OUTBOX)
        async with pool.acquire() as conn:
            await outbox.put(conn, stop)
        await outbox.send(bus.publish, stop)
    return job

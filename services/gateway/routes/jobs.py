from __future__ import annotations

import uuid

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from shared.events import LogLine, StopRequested
from shared.outbox import Outbox
from shared.states import JobStatus

from .. import repository, views
from ..deploying import OUTBOX
from ..deps import BrokerDep, BusDep, CurrentUser, PoolDep, SettingsDep
from ..log_pages import cursor, log_text, parse_cursor
from ..retrying import retry_job
from ..schemas import DeploymentResponse, JobErrors, JobLogPage, JobPublic
from ..status import job_public

router = APIRouter(prefix="/api/training/jobs", tags=["jobs"])


@router.get("", response_model=list[JobPublic])
async def list_jobs(user: CurrentUser, pool: PoolDep, settings: SettingsDep, limit: int = Query(50, ge=1, le=500),
                    offset: int = Query(0, ge=0, le=1_000_000_000)) -> list[JobPublic]:
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


@router.post("/{job_id}/retry", status_code=202, response_model=DeploymentResponse)
async def retry(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep, bus: BusDep, settings: SettingsDep,
                broker: BrokerDep) -> DeploymentResponse:
    """A new job from what this one was deployed with: its configuration as it trained (not the saved
    configuration's text now), data set, provider, GPU and other provider options, placement and budget controls.
    Answered as a deploy is (202, the new ``job_id``). Allowed in any state, a running job's too: the original
    goes on unless you stop it. What may have changed is checked again (the data set, credentials, quotas);
    the preflight is not repeated."""
    return await retry_job(settings, pool, bus, broker, user, str(job_id))


@router.get("/{job_id}/logs", response_model=JobLogPage)
async def get_logs(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep,
                   after: str | None = Query(None, description="The next_after of the page before; none: from the "
                                                               "first line."),
                   q: str | None = Query(None, min_length=1, max_length=200,
                                         description="Only lines holding this text (case-insensitive)."),
                   limit: int = Query(1000, ge=1, le=5000),
                   attempt: int | None = Query(None, ge=1, description="Only this attempt's lines."),
                   tail: bool = Query(False, description="The last ``limit`` lines instead of the first.")
                   ) -> JobLogPage:
    """The job's whole log, every line its workloads wrote (not only the tail), a page at a time, attempt by
    attempt. Follow a running job by asking again with ``after=next_after`` (``tail=true`` first, for its newest
    lines); new lines also arrive on its event stream as ``log`` events."""
    await views.ensure_job_visible(pool, user, str(job_id))
    rows = await views.log_lines(pool, str(job_id), after=parse_cursor(after), attempt=attempt, contains=q,
                                 limit=limit, newest=tail)
    total = await views.count_log_lines(pool, str(job_id), attempt=attempt, contains=q)
    return JobLogPage(job_id=str(job_id), lines=[LogLine(**dict(r)) for r in rows], total=total,
                      next_after=cursor(rows[-1]["attempt"], rows[-1]["number"]) if rows else after)


@router.get("/{job_id}/logs.txt", response_class=StreamingResponse,
            responses={200: {"content": {"text/plain": {}}, "description": "The whole log."}})
async def get_log_text(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep,
                       attempt: int | None = Query(None, ge=1, description="Only this attempt's lines.")
                       ) -> StreamingResponse:
    """The job's whole log as a text file (a download), streamed as it is read; each attempt after the first begins
    with a ``----- attempt N -----`` line."""
    await views.ensure_job_visible(pool, user, str(job_id))
    return StreamingResponse(log_text(pool, str(job_id), attempt), media_type="text/plain; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="tunefleet-job-{job_id}.log"'})

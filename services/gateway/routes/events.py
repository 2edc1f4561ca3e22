from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from shared import subjects
from shared.states import JobStatus

from ..deps import CurrentUser, PoolDep, SettingsDep
from ..status import job_public

router = APIRouter(prefix="/api/training/jobs", tags=["events"])


@router.get("/{job_id}/events")
async def job_events(job_id: uuid.UUID, request: Request, user: CurrentUser, pool: PoolDep,
                     settings: SettingsDep) -> EventSourceResponse:
    """Server-sent events: first ``snapshot`` (the job as GET returns it), then ``status``, ``metrics`` and
    ``predictions`` as they happen, ``cost`` on each provider report (per hour, so far, projected, budget
    remaining) and ``budget_alert``. The stream ends after the job's final status."""
    snapshot = await job_public(pool, settings, user, str(job_id))
    quota = request.app.state.quotas.streams
    quota.take(user)
    sub = None
    closed = False

    async def close() -> None:
        """Give the stream's slot back and unsubscribe, once: when the stream ends, or after the response when it
        never started."""
        nonlocal closed
        if closed:
            return
        closed = True
        quota.give_back(user)
        if sub is not None:
            await sub.unsubscribe()

    nc = request.app.state.nc
    queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)

    async def on_message(msg) -> None:
        if not queue.full():
            queue.put_nowait(msg)

    try:
        sub = await nc.subscribe(subjects.job_all(str(job_id)), cb=on_message)
    except BaseException:
        await close()
        raise

    async def stream() -> AsyncIterator[dict]:
        try:
            yield {"event": "snapshot", "data": snapshot.model_dump_json()}
            if JobStatus(snapshot.status).is_terminal:
                return
            while True:
                msg = await queue.get()
                kind = msg.subject.rsplit(".", 1)[-1]
                yield {"event": kind, "data": msg.data.decode()}
                if kind == "status" and JobStatus(orjson.loads(msg.data)["status"]).is_terminal:
                    return
        finally:
            await close()

    return EventSourceResponse(stream(), ping=15, background=BackgroundTask(close))

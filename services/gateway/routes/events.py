"""Server-sent events: one job's (``/jobs/{job_id}/events``), and every job's of the caller (``/events``), for a
list page that needs no polling. Both are plain NATS subscriptions of this gateway, filtered to what the caller
may see; each holds one of the user's stream slots (``quotas``) for as long as it is open."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import orjson
from fastapi import APIRouter, Request
from nats.aio.msg import Msg
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from shared import subjects
from shared.states import JobStatus

from ..deps import CurrentUser, PoolDep, SettingsDep
from ..status import job_public

router = APIRouter(prefix="/api/training", tags=["events"])

#: Messages a slow client may fall behind by; past that, newer ones are dropped for it.
QUEUE_SIZE = 10_000


class LiveStream:
    """A stream's NATS subscriptions and its slot of the user's stream quota: ``close`` gives both back, once
    (when the stream ends, or after the response when it never started)."""

    def __init__(self, request: Request, user: str):
        self.nc, self.quota, self.user = request.app.state.nc, request.app.state.quotas.streams, user
        self.queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.subscriptions: list = []
        self.closed = False
        self.quota.take(user)

    async def subscribe(self, subject: str, keep: Callable[[Msg], bool] = lambda msg: True) -> None:
        async def on_message(msg: Msg) -> None:
            if not self.queue.full() and keep(msg):
                self.queue.put_nowait(msg)

        try:
            self.subscriptions.append(await self.nc.subscribe(subject, cb=on_message))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.quota.give_back(self.user)
        for subscription in self.subscriptions:
            await subscription.unsubscribe()


def _kind(msg: Msg) -> str:
    """The event's name: the subject's last token (status, cost, metrics, log ...)."""
    return msg.subject.rsplit(".", 1)[-1]


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: uuid.UUID, request: Request, user: CurrentUser, pool: PoolDep,
                     settings: SettingsDep) -> EventSourceResponse:
    """Server-sent events: first ``snapshot`` (the job as GET returns it), then ``status``, ``metrics`` and
    ``predictions`` as they happen, ``log`` with the log lines stored since the last (``{job_id, lines: [{attempt,
    number, text}]}``, batched), ``cost`` on each provider report (per hour, so far, projected, budget remaining)
    and ``budget_alert``. The stream ends after the job's final status."""
    live = LiveStream(request, user)
    # subscribed before the snapshot is read, so that no change falls between the two
    await live.subscribe(subjects.job_all(str(job_id)))
    try:
        snapshot = await job_public(pool, settings, user, str(job_id))
    except BaseException:  # not this user's job (nothing was sent), or the read failed
        await live.close()
        raise

    async def stream() -> AsyncIterator[dict]:
        try:
            yield {"event": "snapshot", "data": snapshot.model_dump_json()}
            if JobStatus(snapshot.status).is_terminal:
                return
            while True:
                msg = await live.queue.get()
                kind = _kind(msg)
                yield {"event": kind, "data": msg.data.decode()}
                if kind == "status" and JobStatus(orjson.loads(msg.data)["status"]).is_terminal:
                    return
        finally:
            await live.close()

    return EventSourceResponse(stream(), ping=15, background=BackgroundTask(live.close))


def _of_user(user: str) -> Callable[[Msg], bool]:
    def keep(msg: Msg) -> bool:
        try:
            return orjson.loads(msg.data).get("user_id") == user
        except (orjson.JSONDecodeError, AttributeError):
            return False

    return keep


@router.get("/events")
async def user_events(request: Request, user: CurrentUser) -> EventSourceResponse:
    """Server-sent events of every job of yours, for a list of jobs: ``status`` (``job_id``, ``previous``,
    ``status``, ``reason``, ``cost`` ... as on a job's stream) whenever one changes, a new job's first ``queued``
    included, and ``cost`` on each provider report of a running one. Nothing about anyone else's jobs. Open it,
    then GET /api/training/jobs: what changes after that arrives here. It does not end by itself."""
    live = LiveStream(request, user)
    keep = _of_user(user)
    await live.subscribe(subjects.JOB_STATUS_ANY, keep)
    await live.subscribe(subjects.JOB_COST_ANY, keep)

    async def stream() -> AsyncIterator[dict]:
        try:
            while True:
                msg = await live.queue.get()
                yield {"event": _kind(msg), "data": msg.data.decode()}
        finally:
            await live.close()

    return EventSourceResponse(stream(), ping=15, background=BackgroundTask(live.close))

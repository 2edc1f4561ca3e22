"""Server-sent events read as they come, from the gateway on a port of its own: a job's stream carries its new log
lines, and a user's stream the status and cost of every job of theirs, and nothing of anyone else's."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
from faststream.nats import NatsBroker

from services.scheduler.subscribers import wire as wire_scheduler
from shared.bus import Bus
from shared.events import JobCost, JobCostUpdated, JobStatusChanged, WorkloadLogged
from shared.states import JobStatus

from .conftest import running_service, served_gateway
from .test_gateway import auth
from .test_job_logs import _visible_job
from .test_scheduler import deploy, wait_status


class Events:
    """A stream's events as they come, pings skipped."""

    def __init__(self, response: httpx.Response):
        self.lines = response.aiter_lines()

    async def next(self, n: int, timeout: float = 20.0) -> list[tuple[str, dict]]:
        got: list[tuple[str, dict]] = []

        async def read() -> None:
            event = None
            async for line in self.lines:
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:") and event:
                    got.append((event, json.loads(line.partition(":")[2])))
                    event = None
                    if len(got) == n:
                        return

        await asyncio.wait_for(read(), timeout)
        return got


async def test_a_jobs_stream_carries_its_new_log_lines_batched(migrated, pool, api_key, nats_url):
    job_id = str(uuid.uuid4())
    await _visible_job(pool, job_id)
    async with running_service("scheduler", wire_scheduler, migrated), served_gateway(migrated) as (_, url, _):
        broker = NatsBroker(nats_url)
        await broker.start()
        bus = Bus(broker)
        await bus.publish(deploy(job_id))
        await wait_status(pool, job_id, "queued")
        async with httpx.AsyncClient(base_url=url, timeout=30) as client, client.stream(
                "GET", f"/api/training/jobs/{job_id}/events", headers=auth(api_key)) as stream:
            assert stream.status_code == 200
            events = Events(stream)
            [(kind, snapshot)] = await events.next(1)
            assert kind == "snapshot" and snapshot["job_id"] == job_id
            lines = [f"step {i}" for i in range(1, 301)]
            await bus.publish(WorkloadLogged(job_id=job_id, provider="local", first_line=1, lines=lines))
            again = WorkloadLogged(job_id=job_id, provider="local", first_line=300, lines=[lines[-1], "step 301"])
            await bus.publish(again)  # one line again, one new
            events = await events.next(2)
        await broker.stop()
    assert [kind for kind, _ in events] == ["log", "log"]  # one message per batch, not per line
    first, second = events[0][1]["lines"], events[1][1]["lines"]
    assert [(x["attempt"], x["number"], x["text"]) for x in first] == [(1, n, f"step {n}") for n in range(1, 301)]
    assert second == [{"attempt": 1, "number": 301, "text": "step 301"}]


async def test_a_users_stream_has_the_status_and_cost_of_their_jobs_only(migrated, pool, api_key, other_key,
                                                                         nats_url):
    mine, bobs = str(uuid.uuid4()), str(uuid.uuid4())
    cost = JobCost(cost_per_hour=1.5, cost_so_far=0.25)
    async with served_gateway(migrated) as (_, url, app):
        broker = NatsBroker(nats_url)
        await broker.start()
        bus = Bus(broker)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async with client.stream("GET", "/api/training/events", headers=auth(api_key)) as stream:
                assert stream.status_code == 200
                assert app.state.quotas.streams.held["alice"] == 1
                for job_id, user in ((bobs, "bob"), (mine, "alice")):
                    await bus.publish(JobStatusChanged(job_id=job_id, user_id=user, provider="local", previous=None,
                                                       status=JobStatus.QUEUED))
                    await bus.announce(JobCostUpdated(job_id=job_id, user_id=user, provider="local", cost=cost))
                await bus.publish(JobStatusChanged(job_id=mine, user_id="alice", provider="local",
                                                   previous=JobStatus.QUEUED, status=JobStatus.FAILED))
                events = await Events(stream).next(3)
            for _ in range(100):  # the slot comes back once the client has gone
                if not app.state.quotas.streams.held["alice"]:
                    break
                await asyncio.sleep(0.05)
            assert not app.state.quotas.streams.held["alice"]
            assert (await client.get("/api/training/events")).status_code == 401
        await broker.stop()
    assert [(kind, data["job_id"], data["user_id"]) for kind, data in events] == [
        ("status", mine, "alice"), ("cost", mine, "alice"), ("status", mine, "alice")]
    assert events[1][1]["cost"]["cost_so_far"] == 0.25 and events[2][1]["status"] == "failed"  # a user's stream
    # goes on past a job's end: it is about every job of theirs

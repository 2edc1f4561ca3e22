"""The scheduler and the registry against real NATS and PostgreSQL; the test plays the provider."""

from __future__ import annotations

import asyncio
import uuid

from faststream.nats import NatsBroker

from services.model_registry.subscribers import wire as wire_registry
from services.scheduler.repository import JobRepository
from services.scheduler.subscribers import wire as wire_scheduler
from shared import subjects
from shared.bus import publish
from shared.config import DataFormat, TrainingConfig
from shared.events import DeployRequested, StopRequested, WorkloadPhase, WorkloadReported
from shared.jobspec import TrainerResult

from .conftest import running_service

CONFIG = TrainingConfig.model_validate({"name": "t", "model": {"base_model": "m"}, "data": {"dataset_id": "d"}})


def deploy(job_id: str) -> DeployRequested:
    return DeployRequested(job_id=job_id, user_id="alice", provider="local", config=CONFIG,
                           dataset_path="/tmp/d.jsonl", dataset_format=DataFormat.INSTRUCTION, dataset_rows=10)


def report(job_id: str, phase: WorkloadPhase, **kw) -> WorkloadReported:
    return WorkloadReported(job_id=job_id, provider="local", phase=phase, **kw)


async def statuses(pool, job_id) -> list[str]:
    return [r["status"] for r in await JobRepository(pool).history(job_id)]


async def wait_status(pool, job_id: str, status: str, timeout: float = 20.0) -> None:
    async def poll():
        while status not in await statuses(pool, job_id):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def wait_history_length(pool, job_id: str, n: int, timeout: float = 20.0) -> None:
    async def poll():
        while len(await statuses(pool, job_id)) < n:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def test_job_travels_from_queue_to_registered_model(migrated, pool, recorder, nats_url):
    job_id = str(uuid.uuid4())
    async with running_service("scheduler", wire_scheduler, migrated), \
            running_service("model_registry", wire_registry, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, deploy(job_id))
        _, provision = await recorder.wait_for(lambda m: m[0] == subjects.provision("local"))
        assert provision["job_id"] == job_id and provision["attempt"] == 1

        await publish(broker, report(job_id, WorkloadPhase.PROVISIONING))
        await wait_status(pool, job_id, "provisioning")
        await publish(broker, report(job_id, WorkloadPhase.RUNNING))
        await wait_status(pool, job_id, "running")
        result = TrainerResult(status="completed", adapter_path="/a", final_loss=0.5, training_seconds=3.0)
        await publish(broker, report(job_id, WorkloadPhase.SUCCEEDED, result=result))
        _, registered = await recorder.wait_for(lambda m: m[0] == subjects.MODEL_REGISTERED)
        await broker.stop()

    assert await statuses(pool, job_id) == ["queued", "provisioning", "running", "completed"]
    assert registered["job_id"] == job_id and registered["final_loss"] == 0.5 and registered["lora_r"] == 16
    model = await pool.fetchrow("SELECT * FROM models WHERE job_id = $1", job_id)
    assert model["adapter_path"] == "/a" and model["dataset_rows"] == 10
    status_events = [m for s, m in recorder.messages if s == subjects.job_status(job_id)]
    assert [m["status"] for m in status_events] == ["queued", "provisioning", "running", "completed"]


async def test_redelivered_and_late_messages_change_nothing(migrated, pool, recorder, nats_url):
    job_id = str(uuid.uuid4())
    async with running_service("scheduler", wire_scheduler, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        cmd = deploy(job_id)
        await publish(broker, cmd)
        # The same command again under a new message id: the job is not created twice.
        await publish(broker, cmd.model_copy(update={"event_id": str(uuid.uuid4())}))
        await wait_status(pool, job_id, "queued")
        await publish(broker, report(job_id, WorkloadPhase.RUNNING))
        await wait_status(pool, job_id, "running")
        await publish(broker, report(job_id, WorkloadPhase.FAILED, message="boom"))
        await wait_status(pool, job_id, "failed")
        await publish(broker, report(job_id, WorkloadPhase.SUCCEEDED))  # too late: failed is final
        await asyncio.sleep(0.5)
        await broker.stop()
    assert await statuses(pool, job_id) == ["queued", "running", "failed"]
    job = await JobRepository(pool).get(job_id)
    assert job["status"] == "failed" and job["status_reason"] == "boom"


async def test_stop_of_a_queued_job_and_of_a_running_one(migrated, pool, recorder, nats_url):
    queued, running = str(uuid.uuid4()), str(uuid.uuid4())
    async with running_service("scheduler", wire_scheduler, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, deploy(queued))
        await wait_status(pool, queued, "queued")
        await publish(broker, StopRequested(job_id=queued, user_id="mallory"))  # not the owner: ignored
        await asyncio.sleep(1.0)
        assert (await JobRepository(pool).get(queued))["status"] == "queued"
        assert not (await JobRepository(pool).get(queued))["stop_requested"]
        await publish(broker, StopRequested(job_id=queued, user_id="alice"))
        await wait_status(pool, queued, "stopped")

        await publish(broker, deploy(running))
        await wait_status(pool, running, "queued")
        await publish(broker, report(running, WorkloadPhase.RUNNING))
        await wait_status(pool, running, "running")
        await publish(broker, StopRequested(job_id=running, user_id="alice"))
        _, term = await recorder.wait_for(
            lambda m: m[0] == subjects.terminate("local") and m[1]["job_id"] == running)
        assert term["reason"] == "stopped by user"
        # The trainer died of the signal: a failure after a stop request counts as stopped.
        await publish(broker, report(running, WorkloadPhase.FAILED, exit_code=-15))
        await wait_status(pool, running, "stopped")
        await broker.stop()
    assert (await JobRepository(pool).get(running))["stop_requested"]


async def test_preempted_job_is_queued_again_with_a_new_attempt(migrated, pool, recorder, nats_url):
    job_id = str(uuid.uuid4())
    async with running_service("scheduler", wire_scheduler, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, deploy(job_id))
        await wait_status(pool, job_id, "queued")
        await publish(broker, report(job_id, WorkloadPhase.RUNNING))
        await wait_status(pool, job_id, "running")
        checkpoint = TrainerResult(status="interrupted", checkpoint_path="/ckpt/checkpoint-6", global_step=6)
        await publish(broker, report(job_id, WorkloadPhase.PREEMPTED, message="spot reclaimed", result=checkpoint))
        _, second = await recorder.wait_for(
            lambda m: m[0] == subjects.provision("local") and m[1]["attempt"] == 2)
        # A late report from the first attempt is ignored.
        await publish(broker, report(job_id, WorkloadPhase.SUCCEEDED, attempt=1))
        await publish(broker, report(job_id, WorkloadPhase.RUNNING, attempt=2))
        await wait_history_length(pool, job_id, 5)
        await asyncio.sleep(0.3)  # room for a wrong late transition to show up
        await broker.stop()
    assert await statuses(pool, job_id) == ["queued", "running", "preempted", "queued", "running"]
    assert second["job_id"] == job_id
    assert second["resume_from_checkpoint"] == "/ckpt/checkpoint-6"  # the next attempt resumes, not restarts


async def test_job_that_reaches_its_budget_is_stopped(migrated, pool, recorder, nats_url):
    job_id = str(uuid.uuid4())
    async with running_service("scheduler", wire_scheduler, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, deploy(job_id).model_copy(update={"budget_limit_usd": 1.5}))
        await wait_status(pool, job_id, "queued")
        await publish(broker, report(job_id, WorkloadPhase.RUNNING, cost_usd=0.4))
        await wait_status(pool, job_id, "running")
        await publish(broker, report(job_id, WorkloadPhase.RUNNING, cost_usd=1.6))
        _, term = await recorder.wait_for(lambda m: m[0] == subjects.terminate("local") and m[1]["job_id"] == job_id)
        await publish(broker, report(job_id, WorkloadPhase.STOPPED, cost_usd=1.62))
        await asyncio.sleep(0.3)
        await broker.stop()
    assert await statuses(pool, job_id) == ["queued", "running", "budget_exceeded"]
    job = await JobRepository(pool).get(job_id)
    assert job["status_reason"] == "cost $1.60 reached the budget of $1.50" == term["reason"]
    assert job["cost_usd"] == 1.62  # the last observation is kept

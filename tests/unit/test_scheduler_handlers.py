"""The scheduler's rules, driven through its handlers with a dict-backed jobs repository and a recording bus."""

from __future__ import annotations

import uuid

import pytest

from services.scheduler.handlers import (
    MAX_ATTEMPTS,
    handle_deploy_requested,
    handle_stop_requested,
    handle_workload_reported,
)
from shared.config import DataFormat, TrainingConfig
from shared.events import DeployRequested, StopRequested, WorkloadPhase, WorkloadReported
from shared.jobspec import TrainerResult
from tests.fakes import FakeJobs, RecordingBus

CONFIG = TrainingConfig.model_validate({"name": "t", "model": {"base_model": "m"}, "data": {"dataset_id": "d"}})


@pytest.fixture
def jobs() -> FakeJobs:
    return FakeJobs()


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


async def deployed(jobs, bus, budget: float | None = None) -> str:
    job_id = str(uuid.uuid4())
    await handle_deploy_requested(DeployRequested(
        job_id=job_id, user_id="alice", provider="local", config=CONFIG, dataset_path="/d.jsonl",
        dataset_format=DataFormat.INSTRUCTION, dataset_rows=8, budget_limit_usd=budget), jobs=jobs, bus=bus)
    return job_id


def report(job_id: str, phase: WorkloadPhase, attempt: int = 1, **kw) -> WorkloadReported:
    return WorkloadReported(job_id=job_id, provider="local", attempt=attempt, phase=phase, **kw)


async def test_a_success_that_overtakes_the_running_report_still_completes_the_job(jobs, bus):
    job_id = await deployed(jobs, bus)
    done = report(job_id, WorkloadPhase.SUCCEEDED, result=TrainerResult(status="completed", output_dir="/o"))
    await handle_workload_reported(done, jobs=jobs, bus=bus)
    assert jobs.statuses(job_id) == ["queued", "running", "completed"]
    assert bus.types() == ["JobStatusChanged", "ProvisionJob", "JobStatusChanged", "JobStatusChanged"]
    # The late reports that follow, and a redelivery of the success, change nothing.
    for late in (report(job_id, WorkloadPhase.PROVISIONING), done):
        await handle_workload_reported(late, jobs=jobs, bus=bus)
    assert jobs.statuses(job_id) == ["queued", "running", "completed"]
    assert bus.types()[-1] == "TerminateJob"  # a provisioning report for an ended job ends its resource


async def test_a_preemption_that_overtakes_the_running_report_retries_the_job(jobs, bus):
    job_id = await deployed(jobs, bus)
    await handle_workload_reported(report(job_id, WorkloadPhase.PREEMPTED, message="host lost"), jobs=jobs, bus=bus)
    assert jobs.statuses(job_id) == ["queued", "running", "preempted", "queued"]
    provisions = [m for m in bus.published if type(m).__name__ == "ProvisionJob"]
    assert [p.attempt for p in provisions] == [1, 2]


async def test_preemption_retries_up_to_the_limit_then_fails(jobs, bus):
    job_id = await deployed(jobs, bus)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING, attempt), jobs=jobs, bus=bus)
        await handle_workload_reported(report(job_id, WorkloadPhase.PREEMPTED, attempt, message="spot reclaimed"),
                                       jobs=jobs, bus=bus)
    job = await jobs.get(job_id)
    assert job["status"] == "failed" and job["attempt"] == MAX_ATTEMPTS
    assert f"preempted {MAX_ATTEMPTS} times" in job["status_reason"] and "spot reclaimed" in job["status_reason"]
    stale = report(job_id, WorkloadPhase.SUCCEEDED, 1)  # an earlier attempt's report is ignored
    await handle_workload_reported(stale, jobs=jobs, bus=bus)
    assert (await jobs.get(job_id))["status"] == "failed"


async def test_the_budget_stops_a_running_job(jobs, bus):
    job_id = await deployed(jobs, bus, budget=2.0)
    await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING, cost_usd=1.5), jobs=jobs, bus=bus)
    assert (await jobs.get(job_id))["status"] == "running"
    await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING, cost_usd=2.01), jobs=jobs, bus=bus)
    job = await jobs.get(job_id)
    assert job["status"] == "budget_exceeded" and "$2.01 reached the budget of $2.00" in job["status_reason"]
    assert bus.types()[-2:] == ["JobStatusChanged", "TerminateJob"]


async def test_only_the_owner_stops_a_job(jobs, bus):
    job_id = await deployed(jobs, bus)
    await handle_stop_requested(StopRequested(job_id=job_id, user_id="mallory"), jobs=jobs, bus=bus)
    assert (await jobs.get(job_id))["status"] == "queued" and "TerminateJob" not in bus.types()
    await handle_stop_requested(StopRequested(job_id=job_id, user_id="alice"), jobs=jobs, bus=bus)
    assert jobs.statuses(job_id) == ["queued", "stopped"] and bus.types()[-1] == "TerminateJob"


async def test_a_failure_after_a_stop_request_counts_as_stopped(jobs, bus):
    job_id = await deployed(jobs, bus)
    await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING), jobs=jobs, bus=bus)
    await handle_stop_requested(StopRequested(job_id=job_id, user_id="alice"), jobs=jobs, bus=bus)
    await handle_workload_reported(report(job_id, WorkloadPhase.FAILED, exit_code=-15), jobs=jobs, bus=bus)
    assert jobs.statuses(job_id) == ["queued", "running", "stopped"]

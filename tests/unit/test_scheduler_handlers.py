"""The scheduler's rules, driven through its handlers with a dict-backed jobs repository and a recording bus."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.scheduler.handlers import (
    MAX_ATTEMPTS,
    handle_deploy_requested,
    handle_stop_requested,
    handle_workload_reported,
)
from shared.config import DataFormat, TrainingConfig
from shared.events import (
    DeployRequested,
    Placement,
    PlacementOffer,
    StopRequested,
    WorkloadPhase,
    WorkloadReported,
)
from shared.jobspec import TrainerResult
from tests.fakes import FakeJobs, RecordingBus

CONFIG = TrainingConfig.model_validate({"name": "t", "model": {"base_model": "m"}, "data": {"dataset_id": "d"}})


@pytest.fixture
def jobs() -> FakeJobs:
    return FakeJobs()


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


async def deployed(jobs, bus, budget: float | None = None, **controls) -> str:
    job_id = str(uuid.uuid4())
    await handle_deploy_requested(DeployRequested(
        job_id=job_id, user_id="alice", provider="local", config=CONFIG, dataset_path="/d.jsonl",
        dataset_format=DataFormat.INSTRUCTION, dataset_rows=8, budget_limit_usd=budget, **controls),
        jobs=jobs, bus=bus)
    return job_id


def report(job_id: str, phase: WorkloadPhase, attempt: int = 1, **kw) -> WorkloadReported:
    return WorkloadReported(job_id=job_id, provider="local", attempt=attempt, phase=phase, **kw)


async def test_a_success_that_overtakes_the_running_report_still_completes_the_job(jobs, bus):
    job_id = await deployed(jobs, bus)
    done = report(job_id, WorkloadPhase.SUCCEEDED, result=TrainerResult(status="completed", output_dir="/o"))
    await handle_workload_reported(done, jobs=jobs, bus=bus)
    assert jobs.statuses(job_id) == ["queued", "running", "completed"]
    assert bus.types() == ["JobStatusChanged", "ProvisionJob", "JobStatusChanged", "JobStatusChanged"]
    # A late report changes nothing, but a provisioning report for an ended job ends its resource.
    await handle_workload_reported(report(job_id, WorkloadPhase.PROVISIONING), jobs=jobs, bus=bus)
    assert jobs.statuses(job_id) == ["queued", "running", "completed"]
    assert bus.types()[-1] == "TerminateJob"
    # A redelivery of the success publishes its status events again, with the same ids (JetStream drops copies).
    first = [m.event_id for m in bus.published[2:4]]
    await handle_workload_reported(done, jobs=jobs, bus=bus)
    assert jobs.statuses(job_id) == ["queued", "running", "completed"]
    assert [m.event_id for m in bus.published[-2:]] == first


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


class CrashingBus(RecordingBus):
    """Dies (as the scheduler's process would) on the first publish that ``crash_on`` picks."""

    def __init__(self, crash_on):
        super().__init__()
        self.crash_on, self.crashed = crash_on, False

    async def publish(self, message) -> None:
        if not self.crashed and self.crash_on(message):
            self.crashed = True
            raise ConnectionError("the scheduler died here")
        await super().publish(message)


def status_is(status: str):
    return lambda m: type(m).__name__ == "JobStatusChanged" and m.status == status


async def test_a_completion_recorded_before_a_crash_is_announced_on_redelivery(jobs):
    bus = CrashingBus(status_is("completed"))
    job_id = await deployed(jobs, bus)
    done = report(job_id, WorkloadPhase.SUCCEEDED, result=TrainerResult(status="completed", output_dir="/o"))
    with pytest.raises(ConnectionError):
        await handle_workload_reported(done, jobs=jobs, bus=bus)
    assert (await jobs.get(job_id))["status"] == "completed"  # recorded, never announced
    await handle_workload_reported(done, jobs=jobs, bus=bus)  # JetStream delivers it again
    announced = [m.status for m in bus.published if type(m).__name__ == "JobStatusChanged"]
    assert announced[-1] == "completed"  # the model registry hears of it


async def test_a_retry_recorded_before_a_crash_is_provisioned_on_redelivery(jobs):
    bus = CrashingBus(lambda m: type(m).__name__ == "ProvisionJob" and m.attempt == 2)
    job_id = await deployed(jobs, bus)
    lost = report(job_id, WorkloadPhase.PREEMPTED, message="host lost")
    with pytest.raises(ConnectionError):
        await handle_workload_reported(lost, jobs=jobs, bus=bus)
    job = await jobs.get(job_id)
    assert job["status"] == "queued" and job["attempt"] == 2  # requeued, but attempt 2 was never commanded
    await handle_workload_reported(lost, jobs=jobs, bus=bus)  # the report is of attempt 1: still followed up
    assert [m.attempt for m in bus.published if type(m).__name__ == "ProvisionJob"] == [1, 2]


async def test_a_budget_stop_recorded_before_a_crash_ends_the_resource_on_redelivery(jobs):
    bus = CrashingBus(lambda m: type(m).__name__ == "TerminateJob")
    job_id = await deployed(jobs, bus, budget=1.0)
    await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING, cost_usd=0.5), jobs=jobs, bus=bus)
    over = report(job_id, WorkloadPhase.RUNNING, cost_usd=1.5)
    with pytest.raises(ConnectionError):
        await handle_workload_reported(over, jobs=jobs, bus=bus)
    await handle_workload_reported(over, jobs=jobs, bus=bus)
    assert (await jobs.get(job_id))["status"] == "budget_exceeded" and bus.types()[-1] == "TerminateJob"


async def test_a_stop_recorded_before_a_crash_is_announced_and_ends_the_resource_on_redelivery(jobs):
    bus = CrashingBus(status_is("stopped"))
    job_id = await deployed(jobs, bus)
    stop = StopRequested(job_id=job_id, user_id="alice")
    with pytest.raises(ConnectionError):
        await handle_stop_requested(stop, jobs=jobs, bus=bus)
    await handle_stop_requested(stop, jobs=jobs, bus=bus)
    assert [m.status for m in bus.published if type(m).__name__ == "JobStatusChanged"][-1] == "stopped"
    assert bus.types()[-1] == "TerminateJob"


async def test_a_stop_that_arrives_before_its_deploy_stops_the_job_when_it_comes(jobs, bus):
    """The stop was accepted; the deploy was delayed (or published again): the job never runs."""
    cmd = DeployRequested(job_id=str(uuid.uuid4()), user_id="alice", provider="local", config=CONFIG,
                          dataset_path="/d.jsonl", dataset_format=DataFormat.INSTRUCTION, dataset_rows=8)
    await handle_stop_requested(StopRequested(job_id=cmd.job_id, user_id="mallory"), jobs=jobs, bus=bus)
    other = DeployRequested(**{**cmd.model_dump(), "job_id": str(uuid.uuid4()), "event_id": str(uuid.uuid4())})
    await handle_stop_requested(StopRequested(job_id=cmd.job_id, user_id="alice"), jobs=jobs, bus=bus)
    await handle_deploy_requested(cmd, jobs=jobs, bus=bus)
    assert jobs.statuses(cmd.job_id) == ["queued", "stopped"]
    assert "ProvisionJob" not in bus.types()
    await handle_deploy_requested(other, jobs=jobs, bus=bus)  # another job of alice's is not touched
    assert jobs.statuses(other.job_id) == ["queued"] and bus.types()[-1] == "ProvisionJob"


async def test_a_state_implied_before_a_crash_is_announced_on_redelivery(jobs):
    bus = CrashingBus(status_is("running"))
    job_id = await deployed(jobs, bus)
    done = report(job_id, WorkloadPhase.SUCCEEDED, result=TrainerResult(status="completed", output_dir="/o"))
    with pytest.raises(ConnectionError):
        await handle_workload_reported(done, jobs=jobs, bus=bus)  # running recorded, then the process died
    await handle_workload_reported(done, jobs=jobs, bus=bus)
    announced = [m.status for m in bus.published if type(m).__name__ == "JobStatusChanged"]
    assert announced == ["queued", "running", "completed"]


def of_type(bus: RecordingBus, name: str) -> list:
    return [m for m in bus.published if type(m).__name__ == name]


async def test_crossing_the_alert_threshold_alerts_once_then_the_budget_stops(jobs, bus):
    job_id = await deployed(jobs, bus, budget=2.0, alert_threshold_pct=50, notify_email="a@example.com")
    for cost in (0.5, 1.0, 1.5, 2.0):
        await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING, cost_usd=cost, cost_per_hour=3.0),
                                       jobs=jobs, bus=bus)
    alerts = of_type(bus, "BudgetAlert")
    assert [(a.kind, a.cost.cost_so_far, a.cost.budget_remaining) for a in alerts] == [("threshold", 1.0, 1.0)]
    assert alerts[0].notify_email == "a@example.com" and alerts[0].subject == f"tunefleet.job.{job_id}.budget_alert"
    assert (await jobs.get(job_id))["status"] == "budget_exceeded"
    # every live report's cost went out as plain NATS, with the budget remaining
    assert [m.cost.budget_remaining for m in bus.announced] == [1.5, 1.0, 0.5, 0.0]


async def test_without_auto_stop_the_budget_only_alerts(jobs, bus):
    job_id = await deployed(jobs, bus, budget=1.0, alert_threshold_pct=80, auto_stop_on_budget=False)
    for cost in (0.9, 1.2, 1.5):
        await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING, cost_usd=cost), jobs=jobs, bus=bus)
    assert [a.kind for a in of_type(bus, "BudgetAlert")] == ["threshold", "limit_reached"]
    assert (await jobs.get(job_id))["status"] == "running" and "TerminateJob" not in bus.types()
    # a redelivered report sends no alert again
    await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING, cost_usd=1.5), jobs=jobs, bus=bus)
    assert len(of_type(bus, "BudgetAlert")) == 2


async def test_max_duration_stops_the_job_with_its_own_reason(jobs, bus):
    job_id = await deployed(jobs, bus, max_duration_hours=1.0)
    await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING), jobs=jobs, bus=bus)
    assert (await jobs.get(job_id))["status"] == "running"
    jobs.rows[job_id]["clock_started_at"] = datetime.now(UTC) - timedelta(hours=1, minutes=1)
    late = report(job_id, WorkloadPhase.RUNNING)
    await handle_workload_reported(late, jobs=jobs, bus=bus)
    job = await jobs.get(job_id)
    assert job["status"] == "stopped" and job["status_reason"].startswith("max_duration_hours reached: it ran 1.02 h")
    terminates = of_type(bus, "TerminateJob")
    assert len(terminates) == 1 and terminates[0].reason == job["status_reason"]
    # redelivered after a crash: the resource is ended again (the same command id), the job stays stopped
    await handle_workload_reported(late, jobs=jobs, bus=bus)
    assert [t.event_id for t in of_type(bus, "TerminateJob")][-1] == terminates[0].event_id


async def test_the_cost_projects_from_the_progress_rate(jobs, bus):
    job_id = await deployed(jobs, bus, budget=10.0)
    await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING), jobs=jobs, bus=bus)
    jobs.rows[job_id]["started_at"] = datetime.now(UTC) - timedelta(hours=1)
    await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING, cost_usd=2.0, cost_per_hour=2.0,
                                          progress=0.25), jobs=jobs, bus=bus)
    cost = bus.announced[-1].cost
    # a quarter done in an hour: three hours more at $2/h
    assert cost.projected_total == pytest.approx(8.0, abs=0.01) and cost.budget_remaining == 8.0


def placement() -> Placement:
    return Placement(offers=[
        PlacementOffer(provider="lambda", gpu="gpu_1x_a10", provider_options={"instance_type": "gpu_1x_a10"},
                       cost_per_hour=0.75),
        PlacementOffer(provider="runpod", gpu="NVIDIA A40", provider_options={"gpu_type": "NVIDIA A40"},
                       cost_per_hour=0.4 * 2)])


async def test_no_capacity_moves_an_automatically_placed_job_to_the_next_offer(jobs, bus):
    job_id = await deployed(jobs, bus, placement=placement())
    jobs.rows[job_id]["provider"] = "lambda"
    full = report(job_id, WorkloadPhase.FAILED, message="Lambda has no gpu_1x_a10 capacity", no_capacity=True)
    await handle_workload_reported(full, jobs=jobs, bus=bus)
    job = await jobs.get(job_id)
    assert jobs.statuses(job_id) == ["queued", "provisioning", "queued"]
    assert job["provider"] == "runpod" and job["attempt"] == 2 and "placed on runpod NVIDIA A40" in job["status_reason"]
    moved = Placement.model_validate(job["placement"])
    assert moved.chosen == 1 and moved.rejected[0].provider == "lambda" and "no capacity" in moved.rejected[0].reason
    provision = of_type(bus, "ProvisionJob")[-1]
    assert (provision.provider, provision.attempt, provision.provider_options) == ("runpod", 2,
                                                                                   {"gpu_type": "NVIDIA A40"})
    # redelivered: provisioned again with the same command id, not moved again
    await handle_workload_reported(full, jobs=jobs, bus=bus)
    assert of_type(bus, "ProvisionJob")[-1].event_id == provision.event_id
    assert Placement.model_validate((await jobs.get(job_id))["placement"]).chosen == 1
    # the last offer full too: the job fails
    await handle_workload_reported(report(job_id, WorkloadPhase.FAILED, attempt=2, message="none", no_capacity=True),
                                   jobs=jobs, bus=bus)
    assert (await jobs.get(job_id))["status"] == "failed"


async def test_no_capacity_fails_a_job_placed_by_hand(jobs, bus):
    job_id = await deployed(jobs, bus)
    await handle_workload_reported(report(job_id, WorkloadPhase.FAILED, message="full", no_capacity=True),
                                   jobs=jobs, bus=bus)
    assert (await jobs.get(job_id))["status"] == "failed"


async def test_the_budget_counts_every_attempt(jobs, bus):
    job_id = await deployed(jobs, bus, budget=2.0)
    await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING, cost_usd=1.2), jobs=jobs, bus=bus)
    await handle_workload_reported(report(job_id, WorkloadPhase.PREEMPTED, cost_usd=1.5), jobs=jobs, bus=bus)
    assert (await jobs.get(job_id))["attempt"] == 2
    await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING, attempt=2, cost_usd=0.4), jobs=jobs, bus=bus)
    job = await jobs.get(job_id)
    assert job["status"] == "running" and job["cost_usd"] == pytest.approx(1.9)
    await handle_workload_reported(report(job_id, WorkloadPhase.RUNNING, attempt=2, cost_usd=0.6), jobs=jobs, bus=bus)
    job = await jobs.get(job_id)
    assert job["status"] == "budget_exceeded" and job["status_reason"] == "cost $2.10 reached the budget of $2.00"

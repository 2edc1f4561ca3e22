"""The local provider under the shared runner, with the scheduler, running the real trainer as a process."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import psutil
import uvicorn
from faststream.nats import NatsBroker

from services.cloud.bundles import artifacts_dir, bundle_dir
from services.cloud.runner import CloudRunner
from services.metrics_ingest.app import create_app as create_ingest
from services.provider_local.compute import LocalCompute
from services.scheduler.repository import JobRepository
from services.scheduler.subscribers import wire as wire_scheduler
from shared.bus import publish
from shared.config import DataFormat, TrainingConfig
from shared.events import DeployRequested, ProvisionJob, StopRequested, WorkloadPhase
from shared.jobspec import TrainerResult

from .conftest import running_service, wire_local
from .test_scheduler import wait_status


@contextlib.asynccontextmanager
async def running_ingest(settings):
    server = uvicorn.Server(uvicorn.Config(create_ingest(settings), host="127.0.0.1", port=settings.ingest_port,
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        await task


def config_for(base_model: str, dataset: str, max_steps: int) -> TrainingConfig:
    return TrainingConfig.model_validate({
        "model": {"base_model": base_model, "max_seq_length": 64}, "data": {"train_path": dataset},
        "training": {"max_steps": max_steps, "batch_size": 2, "logging_steps": 1},
        "predictions": {"enabled": False}})


def deploy(job_id: str, base_model: str, dataset: str, max_steps: int) -> DeployRequested:
    return DeployRequested(job_id=job_id, user_id="alice", provider="local",
                           config=config_for(base_model, dataset, max_steps), dataset_path=dataset,
                           dataset_format=DataFormat.INSTRUCTION, dataset_rows=32)


async def test_trainer_failure_reports_reason_exit_code_and_log(migrated, pool, nats_url, dataset, tmp_path):
    job_id = str(uuid.uuid4())
    async with running_service("scheduler", wire_scheduler, migrated), \
            running_service("provider_local", wire_local, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, deploy(job_id, str(tmp_path / "no-such-model"), dataset, 5))
        await wait_status(pool, job_id, "failed", timeout=120)
        await broker.stop()
    job = await JobRepository(pool).get(job_id)
    assert "no-such-model" in job["status_reason"]
    assert job["result"]["status"] == "failed" and job["result"]["error_type"]
    assert "no-such-model" in job["log_tail"]
    spec = bundle_dir(migrated, job_id, 1) / "spec.json"
    assert oct(spec.stat().st_mode & 0o777) == "0o600"  # it holds the job's ingest token


async def test_stop_ends_the_trainer_process_group(migrated, pool, nats_url, dataset, tiny_model_dir, monkeypatch):
    """Also: the trainer runs with a minimal environment, none of the provider's settings or credentials."""
    monkeypatch.setenv("TUNEFLEET_SECRET_KEY", "the-server-signing-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-server-aws-key")
    job_id = str(uuid.uuid4())
    async with running_ingest(migrated), running_service("scheduler", wire_scheduler, migrated), \
            running_service("provider_local", wire_local, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, deploy(job_id, tiny_model_dir, dataset, 100_000))
        await wait_status(pool, job_id, "running", timeout=60)
        pid = int((await pool.fetchval("SELECT resource_id FROM local_workloads WHERE job_id = $1",
                                       job_id)).split(":")[0])
        environment = psutil.Process(pid).environ()
        assert "PATH" in environment and not [k for k in environment if k.startswith("TUNEFLEET_")]
        assert "the-server-aws-key" not in environment.values()

        async def metrics_arrive():
            while not await pool.fetchval("SELECT count(*) FROM metric_points WHERE job_id = $1", job_id):
                await asyncio.sleep(0.2)

        await asyncio.wait_for(metrics_arrive(), 120)
        await publish(broker, StopRequested(job_id=job_id, user_id="alice"))
        await wait_status(pool, job_id, "stopped", timeout=60)

        async def trainer_gone():
            while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                await asyncio.sleep(0.2)

        await asyncio.wait_for(trainer_gone(), 60)  # SIGTERM: it checkpoints, then exits
        await broker.stop()
    job = await JobRepository(pool).get(job_id)
    assert job["status_reason"] == "stopped on request"


async def test_metrics_left_in_the_spool_are_replayed_when_the_result_is_read(migrated, pool, dataset):
    """The trainer ended with metrics it could not send: the runner sends them before it reports the end."""
    from trainer.reporter import MetricsReporter

    job_id = str(uuid.uuid4())
    reports = []

    async def report(event):
        reports.append(event)

    runner = CloudRunner(LocalCompute(migrated), migrated, pool, report)
    cmd = ProvisionJob(job_id=job_id, provider="local", user_id="alice",
                       config=config_for("unused", dataset, 5), dataset_path=dataset,
                       dataset_format=DataFormat.INSTRUCTION)
    # A trainer that already finished: a short process standing in for it, its output in place.
    runner.compute._argv = lambda spec: ["sleep", "0.2"]
    await runner.provision(cmd)
    folder = artifacts_dir(migrated, job_id, 1)
    offline = MetricsReporter(None, job_id, "unused", str(folder / "metrics-spool.jsonl"))  # ingest down
    for step in range(1, 6):
        offline.log_metrics(step, step / 5, {"loss": 1.0 / step})
    offline.close(timeout=5)
    (folder / "result.json").write_text(TrainerResult(status="completed", global_step=5).model_dump_json())
    await asyncio.sleep(0.5)
    async with running_ingest(migrated):
        await runner.poll_once()
    steps = await pool.fetch("SELECT step FROM metric_points WHERE job_id = $1 ORDER BY step", job_id)
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    assert [r.phase for r in reports] == [WorkloadPhase.PROVISIONING, WorkloadPhase.SUCCEEDED]


async def test_a_restarted_provider_finds_its_trainer_and_reports_how_it_ended(migrated, pool, dataset):
    """A new provider process (a new runner and compute) polls the trainer the old one started."""
    job_id = str(uuid.uuid4())
    reports = []

    async def report(event):
        reports.append(event)

    first = CloudRunner(LocalCompute(migrated), migrated, pool, report)
    first.compute._argv = lambda spec: ["sleep", "3"]
    cmd = ProvisionJob(job_id=job_id, provider="local", user_id="alice", config=config_for("unused", dataset, 5),
                       dataset_path=dataset, dataset_format=DataFormat.INSTRUCTION)
    await first.provision(cmd)
    await first.poll_once()
    assert reports[-1].phase is WorkloadPhase.RUNNING

    second = CloudRunner(LocalCompute(migrated), migrated, pool, report)  # knows no child processes
    await second.provision(cmd)  # a redelivered command changes nothing
    await second.poll_once()
    assert [r.phase for r in reports] == [WorkloadPhase.PROVISIONING, WorkloadPhase.RUNNING]
    artifacts_dir(migrated, job_id, 1).joinpath("result.json").write_text(
        TrainerResult(status="completed", global_step=3).model_dump_json())
    await second.poll_once()
    assert reports[-1].phase is WorkloadPhase.SUCCEEDED and reports[-1].result.global_step == 3
    assert not await second.workloads.live()

"""The local provider with the scheduler, running the real trainer as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import psutil
import pytest
import uvicorn
from faststream.nats import NatsBroker

from services.metrics_ingest.app import create_app as create_ingest
from services.provider_local.bundle import Bundle
from services.provider_local.compute import LocalCompute, _Running
from services.provider_local.subscribers import wire as wire_local
from services.provider_local.workloads import WorkloadRepository
from services.scheduler.repository import JobRepository
from services.scheduler.subscribers import wire as wire_scheduler
from shared.bus import publish
from shared.config import DataFormat, TrainingConfig
from shared.events import DeployRequested, StopRequested

from .conftest import running_service
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


@pytest.fixture
def dataset(tmp_path) -> str:
    from trainer.tiny_model import write_sample_dataset

    return write_sample_dataset(str(tmp_path / "data.jsonl"), rows=32, fmt="instruction")


def deploy(job_id: str, base_model: str, dataset: str, max_steps: int) -> DeployRequested:
    config = TrainingConfig.model_validate({
        "model": {"base_model": base_model, "max_seq_length": 64}, "data": {"train_path": dataset},
        "training": {"max_steps": max_steps, "batch_size": 2, "logging_steps": 1},
        "predictions": {"enabled": False}})
    return DeployRequested(job_id=job_id, user_id="alice", provider="local", config=config, dataset_path=dataset,
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
    bundle = Bundle(migrated.jobs_dir / job_id / "attempt-1")
    assert oct(bundle.spec_path.stat().st_mode & 0o777) == "0o600"  # it holds the job's ingest token


async def test_stop_ends_the_trainer_process_group(migrated, pool, nats_url, dataset, tiny_model_dir):
    job_id = str(uuid.uuid4())
    async with running_ingest(migrated), running_service("scheduler", wire_scheduler, migrated), \
            running_service("provider_local", wire_local, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, deploy(job_id, tiny_model_dir, dataset, 100_000))
        await wait_status(pool, job_id, "running", timeout=60)
        pid = await pool.fetchval("SELECT pid FROM local_workloads WHERE job_id = $1", job_id)

        async def metrics_arrive():
            while not await pool.fetchval("SELECT count(*) FROM metric_points WHERE job_id = $1", job_id):
                await asyncio.sleep(0.2)

        await asyncio.wait_for(metrics_arrive(), 120)
        await publish(broker, StopRequested(job_id=job_id, user_id="alice"))
        await wait_status(pool, job_id, "stopped", timeout=60)
        await broker.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    job = await JobRepository(pool).get(job_id)
    assert job["status_reason"] == "stopped on request"


async def test_metrics_left_in_the_spool_are_replayed_after_the_trainer_ends(migrated, pool, tmp_path):
    from trainer.reporter import MetricsReporter

    job_id = str(uuid.uuid4())
    bundle = Bundle(tmp_path / "bundle")
    bundle.output_dir.mkdir(parents=True)
    offline = MetricsReporter(None, job_id, "unused", str(bundle.spool_path))  # ingest unreachable: spool only
    for step in range(1, 6):
        offline.log_metrics(step, step / 5, {"loss": 1.0 / step})
    offline.close(timeout=5)
    assert bundle.has_spooled_metrics()

    compute = LocalCompute(migrated, WorkloadRepository(pool), report=None)
    async with running_ingest(migrated):
        await asyncio.to_thread(compute._replay_spool, _Running(job_id, 1, bundle, pid=-1))
    steps = await pool.fetch("SELECT step FROM metric_points WHERE job_id = $1 ORDER BY step", job_id)
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    assert not bundle.has_spooled_metrics()


async def test_a_restarted_provider_adopts_a_trainer_still_running(migrated, pool, tmp_path):
    """A provider that restarts finds its trainer still running, watches it, and reports how it ended."""
    from shared.events import WorkloadPhase
    from shared.jobspec import TrainerResult

    job_id = str(uuid.uuid4())
    bundle = Bundle(tmp_path / "bundle")
    bundle.output_dir.mkdir(parents=True)
    bundle.result_path.write_text(TrainerResult(status="completed", global_step=3).model_dump_json())
    # Stands in for a trainer that outlived the provider process that started it.
    trainer = await asyncio.create_subprocess_exec("sleep", "2", start_new_session=True)
    workloads = WorkloadRepository(pool)
    await workloads.claim(job_id, 1)
    await workloads.started(job_id, 1, bundle_dir=str(bundle.root), pid=trainer.pid,
                            pid_started_at=psutil.Process(trainer.pid).create_time())
    reports = []

    async def report(event):
        reports.append(event)

    compute = LocalCompute(migrated, workloads, report)
    await compute.adopt_orphans()
    await asyncio.wait_for(compute.running[job_id].watcher, 30)
    await trainer.wait()
    assert [r.phase for r in reports] == [WorkloadPhase.SUCCEEDED]
    assert reports[0].result.global_step == 3
    assert not await workloads.live()

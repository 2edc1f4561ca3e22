"""FastStream wiring of the scheduler's handlers: durable pull consumers, explicit acks."""

from __future__ import annotations

from shared import subjects
from shared.bus import COMMANDS, EVENTS, Bus, KeyedLocks, durable_consumer
from shared.events import DeployRequested, StopRequested, WorkloadLogged, WorkloadReported
from shared.service import ServiceContext

from . import handlers
from .repository import JobLogs, JobRepository

#: Messages of each kind handled at once; one job's are still handled one after the other (``KeyedLocks``).
WORKERS = 8


async def wire(ctx: ServiceContext) -> None:
    broker, jobs, bus, per_job = ctx.broker, JobRepository(ctx.pool), Bus(ctx.broker), KeyedLocks()
    logs, per_job_log = JobLogs(ctx.pool), KeyedLocks()  # a job's log batches stored and announced in order

    @broker.subscriber(subjects.DEPLOY_REQUESTED, stream=COMMANDS, **durable_consumer("scheduler-deploy", WORKERS))
    async def on_deploy(cmd: DeployRequested) -> None:
        async with per_job.hold(cmd.job_id):
            await handlers.handle_deploy_requested(cmd, jobs=jobs, bus=bus)

    @broker.subscriber(subjects.STOP_REQUESTED, stream=COMMANDS, **durable_consumer("scheduler-stop", WORKERS))
    async def on_stop(cmd: StopRequested) -> None:
        async with per_job.hold(cmd.job_id):
            await handlers.handle_stop_requested(cmd, jobs=jobs, bus=bus)

    @broker.subscriber(subjects.WORKLOAD_REPORTED_ANY, stream=EVENTS,
                       **durable_consumer("scheduler-workload", WORKERS))
    async def on_report(evt: WorkloadReported) -> None:
        async with per_job.hold(evt.job_id):
            await handlers.handle_workload_reported(evt, jobs=jobs, bus=bus)

    @broker.subscriber(subjects.WORKLOAD_LOGGED_ANY, stream=EVENTS, **durable_consumer("scheduler-logs", WORKERS))
    async def on_logged(evt: WorkloadLogged) -> None:
        async with per_job_log.hold(evt.job_id):
            await handlers.handle_workload_logged(evt, logs=logs, bus=bus)

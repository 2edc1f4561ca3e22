"""FastStream wiring of the scheduler's handlers: durable pull consumers, explicit acks."""

from __future__ import annotations

from shared import subjects
from shared.bus import COMMANDS, EVENTS, Bus, durable_consumer
from shared.events import DeployRequested, StopRequested, WorkloadReported
from shared.service import ServiceContext

from . import handlers
from .repository import JobRepository


async def wire(ctx: ServiceContext) -> None:
    broker, jobs, bus = ctx.broker, JobRepository(ctx.pool), Bus(ctx.broker)

    @broker.subscriber(subjects.DEPLOY_REQUESTED, stream=COMMANDS, **durable_consumer("scheduler-deploy"))
    async def on_deploy(cmd: DeployRequested) -> None:
        await handlers.handle_deploy_requested(cmd, jobs=jobs, bus=bus)

    @broker.subscriber(subjects.STOP_REQUESTED, stream=COMMANDS, **durable_consumer("scheduler-stop"))
    async def on_stop(cmd: StopRequested) -> None:
        await handlers.handle_stop_requested(cmd, jobs=jobs, bus=bus)

    @broker.subscriber(subjects.WORKLOAD_REPORTED_ANY, stream=EVENTS, **durable_consumer("scheduler-workload"))
    async def on_report(evt: WorkloadReported) -> None:
        await handlers.handle_workload_reported(evt, jobs=jobs, bus=bus)

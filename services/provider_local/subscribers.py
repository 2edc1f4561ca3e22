"""FastStream wiring of the local provider."""

from __future__ import annotations

from shared import subjects
from shared.bus import COMMANDS, Bus, durable_consumer
from shared.events import ProvisionJob, TerminateJob
from shared.service import Hooks, ServiceContext

from .compute import PROVIDER, LocalCompute
from .workloads import WorkloadRepository


async def wire(ctx: ServiceContext) -> Hooks:
    """Subscribe to this provider's commands; adopt orphans once running, stop trainers at shutdown."""
    bus = Bus(ctx.broker)
    compute = LocalCompute(ctx.settings, WorkloadRepository(ctx.pool), bus.publish)

    broker = ctx.broker

    @broker.subscriber(subjects.provision(PROVIDER), stream=COMMANDS, **durable_consumer("provider-local-provision"))
    async def on_provision(cmd: ProvisionJob) -> None:
        await compute.provision(cmd)

    @broker.subscriber(subjects.terminate(PROVIDER), stream=COMMANDS, **durable_consumer("provider-local-terminate"))
    async def on_terminate(cmd: TerminateJob) -> None:
        await compute.terminate(cmd.job_id)

    return Hooks(after_start=compute.adopt_orphans, before_stop=compute.shutdown)

"""FastStream wiring of the registry."""

from __future__ import annotations

from shared import subjects
from shared.bus import EVENTS, Bus, durable_consumer
from shared.events import JobStatusChanged
from shared.service import ServiceContext

from .handlers import ModelRepository, handle_job_status


async def wire(ctx: ServiceContext) -> None:
    models, bus = ModelRepository(ctx.pool), Bus(ctx.broker)

    @ctx.broker.subscriber(subjects.JOB_STATUS_ANY, stream=EVENTS, **durable_consumer("model-registry-status", 4))
    async def on_status(evt: JobStatusChanged) -> None:
        await handle_job_status(evt, models=models, bus=bus)

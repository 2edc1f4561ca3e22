"""FastStream wiring of the registry: completed jobs become models; serve and stop commands become servings."""

from __future__ import annotations

from shared import subjects
from shared.bus import COMMANDS, EVENTS, Bus, durable_consumer
from shared.events import JobStatusChanged, ServeRequested, ServeStopRequested
from shared.service import Hooks, ServiceContext

from .handlers import ModelRepository, handle_job_status
from .serving.engines import Engines
from .serving.servings import ServingRepository, Servings


async def wire(ctx: ServiceContext) -> Hooks:
    models, bus = ModelRepository(ctx.pool), Bus(ctx.broker)
    servings = Servings(ServingRepository(ctx.pool), Engines(ctx.settings), bus)

    @ctx.broker.subscriber(subjects.JOB_STATUS_ANY, stream=EVENTS, **durable_consumer("model-registry-status", 4))
    async def on_status(evt: JobStatusChanged) -> None:
        await handle_job_status(evt, models=models, bus=bus)

    @ctx.broker.subscriber(subjects.SERVE_REQUESTED, stream=COMMANDS, **durable_consumer("model-registry-serve", 4))
    async def on_serve(cmd: ServeRequested) -> None:
        await servings.requested(cmd)

    @ctx.broker.subscriber(subjects.SERVE_STOP, stream=COMMANDS, **durable_consumer("model-registry-serve-stop", 4))
    async def on_serve_stop(cmd: ServeStopRequested) -> None:
        await servings.stop_requested(cmd)

    return Hooks(after_start=servings.resume, before_stop=servings.close)

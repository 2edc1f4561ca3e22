"""FastStream wiring shared by every provider service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared import subjects
from shared.bus import COMMANDS, Bus, KeyedLocks, durable_consumer
from shared.catalogue import CatalogueRequest
from shared.events import ProvisionJob, TerminateJob
from shared.providers import Compute
from shared.service import Hooks, ServiceContext
from shared.settings import Settings

from .catalogue import CatalogueCache
from .runner import CloudRunner

#: Commands handled at once (a cloud create waits seconds on its API); one job's one after the other.
WORKERS = 8


def wire_provider(make_compute: Callable[[ServiceContext], Compute],
                  poll_interval_s: Callable[[Settings], float] = lambda s: s.cloud_poll_interval_s,
                  extra: Callable[[ServiceContext, CloudRunner], None] | None = None):
    """``extra`` subscribes what else the provider answers (the Hub model check), with the runner at hand."""

    async def wire(ctx: ServiceContext) -> Hooks:
        compute = make_compute(ctx)
        bus = Bus(ctx.broker)
        runner = CloudRunner(compute, ctx.settings, ctx.pool, bus.publish,
                             poll_interval_s=poll_interval_s(ctx.settings), publish_log=bus.publish)
        if extra is not None:
            extra(ctx, runner)
        broker, name, per_job = ctx.broker, compute.name, KeyedLocks()

        @broker.subscriber(subjects.provision(name), stream=COMMANDS,
                           **durable_consumer(f"provider-{name}-provision", WORKERS))
        async def on_provision(cmd: ProvisionJob) -> None:
            async with per_job.hold(cmd.job_id):
                await runner.provision(cmd)

        @broker.subscriber(subjects.terminate(name), stream=COMMANDS,
                           **durable_consumer(f"provider-{name}-terminate", WORKERS))
        async def on_terminate(cmd: TerminateJob) -> None:
            async with per_job.hold(cmd.job_id):
                await runner.terminate(cmd.job_id, cmd.user_id)

        catalogue = CatalogueCache(runner)

        @broker.subscriber(subjects.catalogue(name), queue=f"provider-{name}-catalogue", max_workers=WORKERS)
        async def on_catalogue(request: CatalogueRequest) -> dict:
            return (await catalogue.for_user(request.user_id)).model_dump(mode="json")

        async def start_polling() -> None:
            await runner.recover()
            ctx.background.append(asyncio.create_task(runner.poll_forever(), name=f"{name}-poller"))

        return Hooks(after_start=start_polling, before_stop=runner.close)

    return wire

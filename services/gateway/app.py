"""The gateway's FastAPI application. Clients are made in the lifespan and kept on app.state."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from shared.bus import Bus, connect
from shared.service import service_resources
from shared.settings import Settings
from shared.storage import store_from_settings
from shared.trainer_users import TrainerUsers

from .auth import KeyFirst
from .dashboard import mount_dashboard
from .deploying import run_relay
from .errors import install_error_handlers
from .exports import Exports
from .quotas import ProcessQuotas
from .routes import (
    asyncapi,
    bundles,
    checkpoints,
    configurations,
    costs,
    datasets,
    deploy,
    estimate,
    events,
    gpus,
    health,
    jobs,
    keys,
    metrics,
    models,
    notifications,
    openai_front,
    preflight,
    secrets,
    serving,
    webhooks,
)
from .tracing import install_tracing


def create_app(settings: Settings, tracer_provider: TracerProvider | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # the notifier's tables too: its webhooks and notification addresses are made through these routes
        async with service_resources("gateway", settings, owns=("gateway", "notifier"),
                                     tracer_provider=tracer_provider) as ctx:
            await ctx.broker.start()
            nc = await connect(settings.require_nats_url(), "tunefleet-gateway-live")
            relay = asyncio.create_task(run_relay(ctx.pool, Bus(ctx.broker)), name="outbox-relay")
            app.state.settings, app.state.pool, app.state.broker, app.state.nc = settings, ctx.pool, ctx.broker, nc
            app.state.store = store_from_settings(settings)
            app.state.exports = Exports(ctx.pool, settings, app.state.store)
            await app.state.exports.sweep()
            try:
                yield
            finally:
                relay.cancel()
                await app.state.exports.close()
                if (engines_http := getattr(app.state, "engines_http", None)) is not None:
                    await engines_http.aclose()
                await nc.drain()
                await ctx.broker.stop()

    app = FastAPI(title="TuneFleet", version="0.1.0", lifespan=lifespan,
                  description="Fine-tune open LLMs on rented GPUs. Every route but /healthz needs "
                              "'Authorization: Bearer <api key>'. What other systems can subscribe to on NATS: "
                              "/asyncapi (the AsyncAPI document: /asyncapi.json).")
    app.state.quotas = ProcessQuotas.from_settings(settings)
    app.state.trainer_users = TrainerUsers(settings)
    install_error_handlers(app)
    app.add_middleware(KeyFirst)
    install_tracing(app, tracer_provider)
    for module in (health, configurations, datasets, preflight, estimate, gpus, deploy, jobs, events, metrics,
                   models, checkpoints, serving, openai_front, secrets, keys, bundles, costs, asyncapi, webhooks,
                   notifications):
        app.include_router(module.router)
    mount_dashboard(app)
    return app

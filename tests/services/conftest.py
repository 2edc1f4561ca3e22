"""Services run in this process against the real NATS and PostgreSQL of the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import nats
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from services.cli.stack import migrate_all
from services.cloud.subscribers import wire_provider
from services.gateway.app import create_app
from services.gateway.users import create_api_key
from services.provider_local.compute import LocalCompute
from shared.db import create_pool
from shared.service import Hooks, ServiceContext, add_health_responder, service_resources
from shared.settings import Settings

Wire = Callable[[ServiceContext], Awaitable[Hooks | None]]

#: The local provider as its service wires it (``python -m services.provider_local``).
wire_local = wire_provider(lambda ctx: LocalCompute(ctx.settings), lambda s: s.local_poll_interval_s)


@asynccontextmanager
async def running_service(name: str, wire: Wire, settings: Settings,
                          tracer_provider: TracerProvider | None = None) -> AsyncIterator[ServiceContext]:
    async with service_resources(name, settings, owns=(name,), tracer_provider=tracer_provider) as ctx:
        hooks = await wire(ctx) or Hooks()
        add_health_responder(ctx.broker, name, ctx.pool)
        await ctx.broker.start()
        if hooks.after_start:
            await hooks.after_start()
        try:
            yield ctx
        finally:
            if hooks.before_stop:
                await hooks.before_stop()
            await ctx.broker.stop()


@asynccontextmanager
async def gateway_client(settings: Settings,
                         tracer_provider: TracerProvider | None = None) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, tracer_provider)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


@asynccontextmanager
async def served_gateway(settings: Settings) -> AsyncIterator[tuple[Settings, str, FastAPI]]:
    """The gateway on a port of its own (uvicorn), for what the in-process transport cannot do: read a stream of
    events as it comes, or be called by a workload's own HTTP client. Yields its settings (their ``public_url`` is
    the server's, so signed URLs reach it), its URL and the app."""
    from services.cli.embedded import free_port

    settings = settings.model_copy(update={"gateway_host": "127.0.0.1", "gateway_port": free_port()})
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.gateway_port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task  # it failed to start: say why
        await asyncio.sleep(0.05)
    try:
        yield settings, settings.public_url, app
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 wire API on loopback (``tests.objectstore``), one per test file."""
    from tests.objectstore import S3Server

    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_credentials(monkeypatch) -> None:
    """What boto3's credential chain finds: the test server's keys."""
    from tests.objectstore import ACCESS_KEY, SECRET_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


@pytest.fixture
def dataset(tmp_path) -> str:
    from trainer.tiny_model import write_sample_dataset

    return write_sample_dataset(str(tmp_path / "data.jsonl"), rows=32, fmt="instruction")


@pytest.fixture
async def migrated(settings: Settings) -> Settings:
    await migrate_all(settings.require_database_url())
    return settings


@pytest.fixture
async def pool(migrated: Settings):
    p = await create_pool(migrated.require_database_url())
    yield p
    await p.close()


@pytest.fixture
async def api_key(pool) -> str:
    return await create_api_key(pool, "alice")


@pytest.fixture
async def other_key(pool) -> str:
    return await create_api_key(pool, "bob")


class Recorder:
    """Collects every message on a subject pattern, from a plain NATS subscription."""

    def __init__(self):
        self.messages: list = []

    async def wait_for(self, predicate, timeout: float = 20.0):
        async def poll():
            while True:
                for m in self.messages:
                    if predicate(m):
                        return m
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def recorder(nats_url: str):
    nc = await nats.connect(nats_url)
    rec = Recorder()

    async def on_msg(msg):
        import orjson

        rec.messages.append((msg.subject, orjson.loads(msg.data)))

    await nc.subscribe("tunefleet.>", cb=on_msg)
    yield rec
    await nc.close()

"""What every service process does around its handlers: logging, tracing, the pool, migrations,
streams, the broker, a health responder, and a clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider

from shared import subjects
from shared.bus import RECONNECT, InProgress, broker_options, ensure_streams
from shared.db import apply_migrations, create_pool
from shared.error_policy import ErrorPolicy
from shared.settings import Settings
from shared.telemetry import setup_tracing
from shared.waiting import until_reachable

log = logging.getLogger(__name__)


def configure_logging(settings: Settings, service: str) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    if settings.log_level.upper() != "DEBUG":
        logging.getLogger("faststream").setLevel(logging.WARNING)


def make_broker(settings: Settings, service: str, tracer_provider: TracerProvider | None = None) -> NatsBroker:
    return NatsBroker(
        **broker_options(settings.require_nats_url()),
        name=f"tunefleet-{service}",
        middlewares=[NatsTelemetryMiddleware(tracer_provider=tracer_provider), InProgress, ErrorPolicy],
        graceful_timeout=settings.stop_grace_seconds,
        log_level=logging.DEBUG,
        **RECONNECT,
    )


#: How long the health answer waits for PostgreSQL before calling it unreachable.
DB_CHECK_TIMEOUT_S = 1.0


async def connections(broker: NatsBroker, pool: asyncpg.Pool | None) -> dict:
    """What this process sees of its servers: NATS (connected, reconnects so far) and PostgreSQL (answers a query
    within ``DB_CHECK_TIMEOUT_S``, or the error it gave)."""
    try:
        nc = broker.connection
        seen: dict = {"nats": {"connected": nc.is_connected, "reconnects": int(nc.stats.get("reconnects", 0))}}
    except Exception:  # not connected yet
        seen = {"nats": {"connected": False, "reconnects": 0}}
    if pool is not None:
        try:
            await asyncio.wait_for(pool.fetchval("SELECT 1"), DB_CHECK_TIMEOUT_S)
            seen["postgres"] = {"ok": True}
        except Exception as exc:  # down, restarting, or too slow: all mean "cannot work now"
            seen["postgres"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    return seen


def add_health_responder(broker: NatsBroker, service: str, pool: asyncpg.Pool | None = None) -> None:
    """Answer on the service's health subject: ready when PostgreSQL answers too."""

    @broker.subscriber(subjects.health(service), include_in_schema=False)
    async def _health() -> dict:
        seen = await connections(broker, pool)
        return {"service": service, "ready": seen.get("postgres", {}).get("ok", True), "connections": seen}


@dataclass
class ServiceContext:
    settings: Settings
    broker: NatsBroker
    pool: asyncpg.Pool
    tracer_provider: TracerProvider | None = None
    background: list[asyncio.Task] = field(default_factory=list)


@asynccontextmanager
async def service_resources(service: str, settings: Settings, *, owns: tuple[str, ...] = (),
                            tracer_provider: TracerProvider | None = None) -> AsyncIterator[ServiceContext]:
    """Pool, migrations of the tables ``owns`` names, streams, and an unstarted broker; waits for PostgreSQL and
    NATS for as long as they take to answer."""
    pool = await until_reachable(lambda: create_pool(settings.require_database_url(), min_size=settings.db_pool_min,
                                                     max_size=settings.db_pool_max), "PostgreSQL")
    try:
        await until_reachable(lambda: apply_migrations(pool, *owns), "PostgreSQL")
        await ensure_streams(settings.require_nats_url())
        broker = make_broker(settings, service, tracer_provider)
        yield ServiceContext(settings=settings, broker=broker, pool=pool, tracer_provider=tracer_provider)
    finally:
        await pool.close()


async def wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@dataclass
class Hooks:
    """What a service does once its broker runs, and before it stops."""

    after_start: Callable[[], Awaitable[None]] | None = None
    before_stop: Callable[[], Awaitable[None]] | None = None


def run_service(service: str, owns: tuple[str, ...],
                wire: Callable[[ServiceContext], Awaitable[Hooks | None]]) -> None:
    """Run one subscriber service until SIGINT/SIGTERM. ``wire`` registers subscribers on ctx.broker."""
    settings = Settings()
    configure_logging(settings, service)
    tracer_provider = setup_tracing(service, settings)

    async def main() -> None:
        async with service_resources(service, settings, owns=owns, tracer_provider=tracer_provider) as ctx:
            hooks = await wire(ctx) or Hooks()
            add_health_responder(ctx.broker, service, ctx.pool)
            await ctx.broker.start()
            if hooks.after_start is not None:
                await hooks.after_start()
            log.info("%s ready", service)
            try:
                await wait_for_stop_signal()
            finally:
                log.info("%s stopping", service)
                if hooks.before_stop is not None:
                    await hooks.before_stop()
                for task in ctx.background:
                    task.cancel()
                await ctx.broker.stop()
        tracer_provider.shutdown()

    asyncio.run(main())

"""Waiting for a server to answer: a service that starts before its NATS or PostgreSQL, or while one restarts,
waits for it for as long as it takes instead of crashing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import nats

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What a server that is down, starting or restarting answers; anything else (a wrong password) is raised.
UNAVAILABLE = (OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
               asyncpg.PostgresConnectionError, nats.errors.NoServersError, nats.errors.TimeoutError)
#: What a query or a publish raises while its server is away or restarting (a broken pooled connection too: one
#: the server dropped in the middle of an operation may answer the next with asyncpg's InternalClientError).
OUTAGE = (*UNAVAILABLE, asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.AdminShutdownError,
          asyncpg.CrashShutdownError, nats.errors.ConnectionClosedError, nats.errors.NoRespondersError)


async def until_reachable(connect_once: Callable[[], Awaitable[T]], what: str, max_wait_s: float = 10.0) -> T:
    """``await connect_once()`` until it succeeds, waiting 0.5, 1, 2 … ``max_wait_s`` s between tries and saying
    so: a service that starts before its NATS or PostgreSQL, or while one restarts, waits for it."""
    delay, tries = 0.5, 0
    while True:
        try:
            return await connect_once()
        except UNAVAILABLE as exc:
            tries += 1
            log_at = logging.WARNING if tries in (1, 10) or tries % 60 == 0 else logging.DEBUG
            log.log(log_at, "%s not reachable yet (%s: %s); trying again in %.1fs", what, type(exc).__name__,
                    exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_wait_s)

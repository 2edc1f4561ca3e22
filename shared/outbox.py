"""A transactional outbox: a message is written in the same transaction as the change it announces, published
after the commit, and marked sent once JetStream has stored it. What a crash or an unreachable NATS left unsent
is published again by ``relay`` (at start and then now and then), with its own ``event_id``, so JetStream and the
subscribers drop a copy. Each service that uses one owns its table (``<name>_outbox``, same shape)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from shared.events import (
    DeployRequested,
    Message,
    ServeRequested,
    ServeStopRequested,
    StopRequested,
    TerminateJob,
    WorkloadReported,
)

log = logging.getLogger(__name__)

Publish = Callable[[Message], Awaitable[None]]

#: The messages an outbox may hold, by class name (as stored in its ``kind`` column).
KINDS: dict[str, type[Message]] = {cls.__name__: cls for cls in
                                   (DeployRequested, StopRequested, TerminateJob, WorkloadReported,
                                    ServeRequested, ServeStopRequested)}
#: A row younger than this is left to the publish that follows its commit.
RELAY_AFTER_S = 5.0
#: Sent messages are kept this long (to see what went out), then deleted.
KEEP_SENT_DAYS = 7


class Outbox:
    def __init__(self, pool: asyncpg.Pool, table: str):
        if not table.isidentifier():
            raise ValueError(f"bad table name {table!r}")
        self.pool, self.table = pool, table

    async def put(self, conn: asyncpg.Connection, message: Message) -> None:
        """Write ``message`` inside the caller's transaction on ``conn``."""
        await conn.execute(
            f"""INSERT INTO {self.table} (event_id, kind, message) VALUES ($1, $2, $3)
                ON CONFLICT (event_id) DO NOTHING""",
            message.event_id, type(message).__name__, message.model_dump(mode="json"))

    async def send(self, publish: Publish, message: Message) -> bool:
        """Publish a committed message now; on failure it stays for the relay. True when it went out."""
        try:
            await publish(message)
        except Exception as exc:
            log.warning("publishing %s %s failed (%s); the outbox relay will send it", type(message).__name__,
                        message.event_id, exc)
            return False
        await self.pool.execute(f"UPDATE {self.table} SET published_at = now() WHERE event_id = $1",
                                message.event_id)
        return True

    async def relay(self, publish: Publish, older_than_s: float = RELAY_AFTER_S, limit: int = 500) -> int:
        """Publish unsent messages older than ``older_than_s``, oldest first; returns how many went out."""
        rows = await self.pool.fetch(
            f"""SELECT event_id, kind, message FROM {self.table}
                WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $1)
                ORDER BY created_at LIMIT $2""", older_than_s, limit)
        sent = 0
        for row in rows:
            try:
                message = KINDS[row["kind"]].model_validate(row["message"])
            except (KeyError, ValueError):  # written by another version: it must not hold up the others
                log.error("outbox %s: message %s (%s) cannot be read; it is set aside", self.table, row["event_id"],
                          row["kind"])
                await self.pool.execute(f"UPDATE {self.table} SET published_at = 'epoch' WHERE event_id = $1",
                                        row["event_id"])
                continue
            if not await self.send(publish, message):
                break  # NATS is away: the rest wait for the next pass
            sent += 1
        if sent:
            log.info("outbox %s: published %s message(s) left unsent", self.table, sent)
        await self.pool.execute(
            f"DELETE FROM {self.table} WHERE published_at < now() - make_interval(days => $1)", KEEP_SENT_DAYS)
        return sent

    async def relay_forever(self, publish: Publish, every_s: float = RELAY_AFTER_S) -> None:
        while True:
            try:
                await self.relay(publish)
            except Exception:
                log.warning("outbox %s relay pass failed; trying again in %.0fs", self.table, every_s, exc_info=True)
            await asyncio.sleep(every_s)

    async def unsent(self) -> int:
        return await self.pool.fetchval(f"SELECT count(*) FROM {self.table} WHERE published_at IS NULL")

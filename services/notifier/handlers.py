"""What the notifier does with an event: queue a delivery for each webhook that asked for it and, for the events
that warrant one, an email. Sending is the senders' (``webhooks``, ``mail``): nothing queued is lost if this process
stops, and a redelivered event queues nothing twice."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import asyncpg

from . import store
from .mail import EMAILED, compose, valid_address
from .payloads import Notice

log = logging.getLogger(__name__)


@dataclass
class Outboxes:
    """Where notices are queued, and the events that wake this process's senders."""

    pool: asyncpg.Pool
    emails_on: bool
    webhooks_queued: asyncio.Event = field(default_factory=asyncio.Event)
    emails_queued: asyncio.Event = field(default_factory=asyncio.Event)


async def recipient(pool: asyncpg.Pool, notice: Notice, notify_email: str | None) -> str | None:
    """The job's notify_email, else the user's notification address; None when neither is a valid address."""
    if notify_email:
        address = valid_address(notify_email)
        if address is None:
            log.warning("job %s: its notify_email is not a valid address; no email is sent", notice.data["job_id"])
        return address
    row = await store.get_address(pool, notice.user_id)
    return valid_address(row["email"]) if row else None


async def handle_notice(notice: Notice, notify_email: str | None, *, outboxes: Outboxes) -> None:
    if await store.queue_deliveries(outboxes.pool, notice):
        outboxes.webhooks_queued.set()
    if not outboxes.emails_on or notice.type not in EMAILED:
        return
    to = await recipient(outboxes.pool, notice, notify_email)
    if to is None:
        return
    subject, body = compose(notice)
    if await store.queue_email(outboxes.pool, notice, to, subject, body):
        outboxes.emails_queued.set()

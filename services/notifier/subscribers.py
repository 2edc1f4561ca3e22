"""FastStream wiring of the notifier: two durable consumers that queue, and two senders in the background."""

from __future__ import annotations

import asyncio
import logging

import httpx
from nats.js.api import DeliverPolicy

from shared import subjects
from shared.bus import EVENTS, durable_consumer
from shared.events import BudgetAlert, JobStatusChanged
from shared.service import Hooks, ServiceContext

from .handlers import Outboxes, handle_notice
from .mail import Mailer
from .payloads import budget_notice, status_notice
from .retry import RetryPolicy, send_forever
from .webhooks import WebhookSender

log = logging.getLogger(__name__)


def _consumer(name: str, workers: int) -> dict:
    # A notifier seen for the first time starts with what happens from then on, not with the stream's last week.
    return {**durable_consumer(name, workers), "deliver_policy": DeliverPolicy.NEW}


async def wire(ctx: ServiceContext) -> Hooks:
    settings, policy = ctx.settings, RetryPolicy.from_settings(ctx.settings)
    if not settings.smtp_host:
        log.info("TUNEFLEET_SMTP_HOST is not set: job emails are not sent")
    outboxes = Outboxes(ctx.pool, emails_on=bool(settings.smtp_host))
    client = httpx.AsyncClient(timeout=settings.webhook_timeout_s, follow_redirects=False)
    webhooks = WebhookSender(ctx.pool, client, settings, policy)
    mailer = Mailer(ctx.pool, settings, policy)

    @ctx.broker.subscriber(subjects.JOB_STATUS_ANY, stream=EVENTS, **_consumer("notifier-status", 4))
    async def on_status(evt: JobStatusChanged) -> None:
        await handle_notice(status_notice(evt), evt.notify_email, outboxes=outboxes)

    @ctx.broker.subscriber(subjects.JOB_BUDGET_ALERT_ANY, stream=EVENTS, **_consumer("notifier-budget-alerts", 2))
    async def on_budget_alert(evt: BudgetAlert) -> None:
        await handle_notice(budget_notice(evt), evt.notify_email, outboxes=outboxes)

    senders: list[asyncio.Task] = []

    async def after_start() -> None:
        senders.append(asyncio.create_task(
            send_forever("webhooks", webhooks.claim, webhooks.send, outboxes.webhooks_queued), name="webhook-sender"))
        if outboxes.emails_on:
            senders.append(asyncio.create_task(
                send_forever("emails", mailer.claim, mailer.send, outboxes.emails_queued), name="email-sender"))
        ctx.background.extend(senders)

    async def before_stop() -> None:
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await client.aclose()

    return Hooks(after_start=after_start, before_stop=before_stop)

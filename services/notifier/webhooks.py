"""Sending one webhook delivery: signed by the Standard Webhooks scheme, to the address checked for this very
request, with the answer (or the error) written to the delivery's log."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import asyncpg
import httpx
from standardwebhooks import Webhook

from shared.netpolicy import BlockedAddress
from shared.settings import Settings

from . import store, urls
from .endpoint_secrets import SecretUnreadable, open_secret
from .retry import FAILED, Outcome, RetryPolicy

log = logging.getLogger(__name__)

#: Bytes of an answer kept in the delivery log.
EXCERPT_BYTES = 1024
#: How long past its request timeout a claimed delivery stays with the process that claimed it.
LEASE_MARGIN_S = 50.0


def signed_headers(secret: str, msg_id: str, body: str, now: datetime) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, body),
            "content-type": "application/json", "user-agent": "TuneFleet-Webhooks/1"}


async def _excerpt(response: httpx.Response) -> str:
    kept = b""
    async for chunk in response.aiter_bytes():
        kept += chunk
        if len(kept) >= EXCERPT_BYTES:
            break
    return kept[:EXCERPT_BYTES].decode("utf-8", errors="replace")


class Undeliverable(Exception):
    """A delivery that no retry would send: it is given up at once."""


class WebhookSender:
    def __init__(self, pool: asyncpg.Pool, client: httpx.AsyncClient, settings: Settings, policy: RetryPolicy):
        self.pool, self.client, self.settings, self.policy = pool, client, settings, policy
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S

    async def claim(self) -> list[asyncpg.Record]:
        return await store.claim_deliveries(self.pool, self.lease_s)

    async def send(self, row: asyncpg.Record) -> None:
        tries, now = row["attempts"] + 1, datetime.now(UTC)
        started = time.monotonic()
        status = excerpt = error = None
        final = False
        try:
            status, excerpt = await self._post(row["url"], row["event_id"], row["body"], self._secret(row), now)
        except Undeliverable as exc:
            error, final = str(exc), True
        except (BlockedAddress, urls.BadWebhookUrl) as exc:
            error = f"not sent: {exc}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except TimeoutError:
            error = f"no complete answer within {self.settings.webhook_timeout_s:g} s"
        gone = status == 410
        outcome = self.policy.after(ok=status is not None and 200 <= status < 300, final=final or gone, tries=tries,
                                    first_try=row["first_attempt_at"] or now, now=now)
        attempt = store.Attempt(tries, now, int((time.monotonic() - started) * 1000), status, error, excerpt)
        await store.record_attempt(self.pool, row["id"], attempt, outcome)
        if gone:
            await store.disable_endpoint(self.pool, row["endpoint_id"], f"answered 410 Gone at {now.isoformat()}")
        self._log(row, attempt, outcome)

    def _secret(self, row: asyncpg.Record) -> str:
        if row["disabled_at"] is not None:
            raise Undeliverable(f"not sent: the webhook is disabled ({row['disabled_reason']})")
        try:
            return open_secret(self.settings.require_secret_key(), row["sealed_secret"])
        except SecretUnreadable as exc:
            raise Undeliverable(f"not sent: {exc}") from None

    async def _post(self, url: str, msg_id: str, body: str, secret: str, now: datetime) -> tuple[int, str]:
        """POST ``body``; unless private URLs are allowed, to the public address the host resolves to now (pinned
        for this request, the name kept for Host and TLS). Redirects are not followed; the whole exchange has
        ``webhook_timeout_s`` (a receiver that answers byte by byte does not hold a sender)."""
        target = urls.parse(url)
        headers = signed_headers(secret, msg_id, body, now)
        extensions: dict = {}
        if not self.settings.allow_private_urls:
            address = await urls.checked_address(target)
            headers["host"] = target.netloc.decode("ascii")
            extensions["sni_hostname"] = target.host
            target = target.copy_with(host=address)
        async with asyncio.timeout(self.settings.webhook_timeout_s), self.client.stream(
                "POST", target, content=body.encode(), headers=headers, extensions=extensions) as response:
            return response.status_code, await _excerpt(response)

    @staticmethod
    def _log(row: asyncpg.Record, attempt: store.Attempt, outcome: Outcome) -> None:
        # the error itself goes to the user's delivery log only: it may quote the URL, which may hold a token
        what = f"HTTP {attempt.http_status}" if attempt.http_status is not None else "no answer"
        if outcome.status == FAILED:
            log.warning("webhook delivery %s to endpoint %s given up after %s tries (%s)", row["id"],
                        row["endpoint_id"], attempt.number, what)
        else:
            log.info("webhook delivery %s to endpoint %s, try %s: %s (%s)", row["id"], row["endpoint_id"],
                     attempt.number, what, outcome.status)

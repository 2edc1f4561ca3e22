"""When a failed webhook or email is tried again, and the loop that sends whatever is due."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.settings import Settings

log = logging.getLogger(__name__)

#: The longest wait between two tries.
CAP_S = 3600.0
#: How often an idle sender looks for due work that another process queued (the gateway's test events).
POLL_S = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """Try ``n`` waits about base·2^(n-1) seconds (jittered down to half, capped at ``CAP_S``); a delivery still
    failing ``give_up_s`` after its first try is given up, with one last try at that moment."""

    base_s: float
    give_up_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.webhook_retry_base_s, settings.webhook_give_up_s)

    def next_attempt(self, failed_tries: int, first_try: datetime, now: datetime) -> datetime | None:
        """When to try again after ``failed_tries`` (≥ 1), the first at ``first_try``; None: give up."""
        deadline = first_try + timedelta(seconds=self.give_up_s)
        if now >= deadline:
            return None
        wait = min(self.base_s * 2 ** (failed_tries - 1), CAP_S) * random.uniform(0.5, 1.0)
        return min(now + timedelta(seconds=wait), deadline)

    def after(self, *, ok: bool, final: bool, tries: int, first_try: datetime, now: datetime) -> Outcome:
        """Where a delivery stands after its try number ``tries``: ``final`` for a failure no retry mends."""
        if ok:
            return Outcome(DELIVERED, None)
        retry_at = None if final else self.next_attempt(tries, first_try, now)
        return Outcome(PENDING, retry_at) if retry_at else Outcome(FAILED, None)


PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class Outcome:
    status: str
    retry_at: datetime | None


async def send_forever(name: str, claim: Callable[[], Awaitable[Sequence]], send: Callable[[object], Awaitable[None]],
                       wake: asyncio.Event) -> None:
    """Claim due work and send it, over and over; when none is due, wait for ``wake`` or ``POLL_S``."""
    while True:
        try:
            batch = await claim()
            if batch:
                for failure in await asyncio.gather(*(send(item) for item in batch), return_exceptions=True):
                    if isinstance(failure, Exception):  # its lease runs out, and it is claimed again then
                        log.warning("%s: a send failed: %s: %s", name, type(failure).__name__, failure)
                continue
        except Exception:  # PostgreSQL away, or a bug in one pass: the next pass tries again
            log.warning("%s: a sending pass failed; trying again in %.0fs", name, POLL_S, exc_info=True)
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), POLL_S)

"""The one place where a subscriber's error becomes an ack, a redelivery or a dead letter, as ``shared.errors``
declares it.

* A ``TuneFleetError`` that is not ``transient`` (bad input, not found, ...) will not get better by retrying, nor
  will a body that does not validate: the message goes to the dead letters (``shared.dead_letters``) and is then
  acknowledged, logged once.
* Anything else — a transient error, PostgreSQL restarting, a bug — is nacked with a delay that grows with the
  number of deliveries (1 s, 2 s, 4 s ... 60 s), so a short outage never exhausts the redeliveries and a poison
  message does not spin. A message that has failed ``DEAD_AFTER`` times (more than a day at those delays) goes
  to the dead letters too.

A message is acknowledged only once its dead letter is stored: when storing it fails (NATS is away), it is nacked
and tried again later. Nothing is dropped.
"""

from __future__ import annotations

import logging
from typing import Any

from faststream import BaseMiddleware
from faststream.exceptions import HandlerException, NackMessage
from pydantic import ValidationError

from shared import subjects
from shared.dead_letters import bury_headers, dead_subject
from shared.errors import TuneFleetError

log = logging.getLogger(__name__)

MAX_DELAY_S = 60.0
#: Deliveries after which a message that keeps failing is moved to the dead letters.
DEAD_AFTER = 2000


def redelivery_delay(deliveries: int) -> float:
    """Seconds before the next delivery of a message delivered ``deliveries`` times so far."""
    return min(2.0 ** min(max(deliveries - 1, 0), 16), MAX_DELAY_S)


def _subject(msg: Any) -> str:
    return getattr(getattr(msg, "raw_message", None), "subject", None) or getattr(msg, "subject", "") or ""


def _metadata(msg: Any):
    """JetStream's delivery metadata, or None for a core NATS message (a health request)."""
    try:
        return msg.raw_message.metadata
    except Exception:  # nats-py raises NotJSMessageError for a core message
        return None


class ErrorPolicy(BaseMiddleware):
    async def consume_scope(self, call_next, msg):
        try:
            return await call_next(msg)
        except HandlerException:
            raise  # a handler that steers its own ack
        except TuneFleetError as exc:
            why = f"{exc.code}: {exc.message}"
            if exc.transient:
                return await self._retry(msg, why)
            return await self._bury(msg, why)
        except ValidationError as exc:
            return await self._bury(msg, f"the message does not validate: {exc}")
        except Exception as exc:
            log.exception("handling %s failed", _subject(msg))
            return await self._retry(msg, f"{type(exc).__name__}: {exc}")

    async def _retry(self, msg: Any, why: str) -> None:
        metadata = _metadata(msg)
        if metadata is None:
            return None  # a core message is never redelivered: the requester sees no answer
        deliveries = int(metadata.num_delivered or 1)
        if deliveries >= DEAD_AFTER:
            return await self._bury(msg, f"failed {deliveries} times; last: {why}")
        delay = redelivery_delay(deliveries)
        log.warning("redelivering %s in %.0fs (delivery %s failed: %s)", _subject(msg), delay, deliveries, why)
        raise NackMessage(delay=delay)

    async def _bury(self, msg: Any, why: str) -> None:
        """Store the message in the dead letters, then let it be acknowledged."""
        subject = _subject(msg)
        metadata = _metadata(msg)
        if metadata is None:
            log.warning("dropping a request on %s that cannot be handled: %s", subject, why)
            return None
        consumer = metadata.consumer or ""
        headers = bury_headers(original_subject=subject, consumer=consumer, error=why,
                               deliveries=int(metadata.num_delivered or 1), stream=metadata.stream or "",
                               stream_seq=int(metadata.sequence.stream or 0))
        try:
            await self.context.get("broker").publish(msg.body, subject=dead_subject(consumer), headers=headers,
                                                     stream=subjects.DEAD_LETTERS_STREAM, timeout=10)
        except Exception as exc:
            log.warning("could not store %s in the dead letters (%s); it stays and is retried", subject, exc)
            raise NackMessage(delay=redelivery_delay(int(metadata.num_delivered or 1))) from exc
        log.warning("moved %s to the dead letters (consumer %s): %s", subject, consumer, why)
        return None

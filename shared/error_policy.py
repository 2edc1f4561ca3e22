"""The one place where a subscriber's error becomes an ack or a redelivery, as ``shared.errors`` declares it.

* A ``TuneFleetError`` that is not ``transient`` (bad input, not found, ...) will not get better by retrying: the
  message is acknowledged and the error logged, once.
* Anything else — a transient error, PostgreSQL restarting, a bug — is nacked with a delay that grows with the
  number of deliveries (1 s, 2 s, 4 s ... 60 s), so a short outage never exhausts the redeliveries and a poison
  message does not spin. ``MAX_DELIVER`` deliveries at those delays span more than a day.
"""

from __future__ import annotations

import logging
from typing import Any

from faststream import BaseMiddleware
from faststream.exceptions import HandlerException, NackMessage

from shared.errors import TuneFleetError

log = logging.getLogger(__name__)

MAX_DELAY_S = 60.0
MAX_DELIVER = 2000


def redelivery_delay(deliveries: int) -> float:
    """Seconds before the next delivery of a message delivered ``deliveries`` times so far."""
    return min(2.0 ** max(deliveries - 1, 0), MAX_DELAY_S)


def _deliveries(msg: Any) -> int:
    metadata = getattr(getattr(msg, "raw_message", None), "metadata", None)
    return int(getattr(metadata, "num_delivered", 1) or 1)


class ErrorPolicy(BaseMiddleware):
    async def consume_scope(self, call_next, msg):
        try:
            return await call_next(msg)
        except HandlerException:
            raise  # a handler that steers its own ack
        except TuneFleetError as exc:
            if exc.transient:
                raise self._retry(msg, f"{exc.code}: {exc.message}") from exc
            log.warning("dropping %s after a permanent error (%s): %s", getattr(msg, "subject", "a message"),
                        exc.code, exc.message)
            return None
        except Exception as exc:
            log.exception("handling %s failed", getattr(msg, "subject", "a message"))
            raise self._retry(msg, f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _retry(msg: Any, why: str) -> NackMessage:
        deliveries = _deliveries(msg)
        delay = redelivery_delay(deliveries)
        log.warning("redelivering %s in %.0fs (delivery %s failed: %s)", getattr(msg, "subject", "a message"),
                    delay, deliveries, why)
        return NackMessage(delay=delay)

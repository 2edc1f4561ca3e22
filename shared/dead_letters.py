"""The dead-letter stream: messages a subscriber could not handle, kept until someone replays or discards them.

A message lands here, as the exact bytes it arrived with, when its handler failed for good (a permanent
``TuneFleetError`` or a body that does not validate) or kept failing for ``shared.error_policy.DEAD_AFTER``
deliveries. It is stored on ``tunefleet.dead.<consumer>`` with headers that say where it came from and why; only
then is the original acknowledged, so nothing is dropped on the way. ``/healthz`` counts what is here and
``tunefleet dead-letters list | replay | discard`` works on it.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
from nats.js.errors import NotFoundError

from shared import subjects

ORIGINAL_SUBJECT = "Tunefleet-Original-Subject"
CONSUMER = "Tunefleet-Consumer"
ERROR = "Tunefleet-Error"
DELIVERIES = "Tunefleet-Deliveries"
FAILED_AT = "Tunefleet-Failed-At"
#: How many dead letters ``/healthz`` describes, newest first (it counts all of them).
LATEST_SHOWN = 5


def dead_subject(consumer: str) -> str:
    return f"{subjects.DEAD_LETTERS_PREFIX}.{consumer or 'unknown'}"


def bury_headers(*, original_subject: str, consumer: str, error: str, deliveries: int, stream: str,
                 stream_seq: int) -> dict[str, str]:
    """Headers of a dead letter. Its message id is derived from where the original was stored, so burying the
    same message twice (a retry after a lost answer) keeps one copy."""
    return {ORIGINAL_SUBJECT: original_subject, CONSUMER: consumer, ERROR: error[:1000].replace("\n", " "),
            DELIVERIES: str(deliveries), FAILED_AT: datetime.now(UTC).isoformat(),
            "Nats-Msg-Id": f"dead/{stream}/{stream_seq}/{consumer}"}


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    subject: str
    consumer: str
    error: str
    deliveries: int
    failed_at: str
    data: bytes

    def describe(self) -> dict:
        return {"seq": self.seq, "subject": self.subject, "consumer": self.consumer, "error": self.error,
                "deliveries": self.deliveries, "failed_at": self.failed_at}


def _letter(raw) -> DeadLetter:
    headers = raw.headers or {}
    return DeadLetter(seq=raw.seq, subject=headers.get(ORIGINAL_SUBJECT, ""), consumer=headers.get(CONSUMER, ""),
                      error=headers.get(ERROR, ""), deliveries=int(headers.get(DELIVERIES, "0") or 0),
                      failed_at=headers.get(FAILED_AT, ""), data=raw.data or b"")


class DeadLetters:
    """Reading, replaying and discarding the dead-letter stream over one NATS connection."""

    def __init__(self, nc: nats.NATS):
        self.js = nc.jetstream()
        self.nc = nc

    async def count(self) -> int:
        try:
            return (await self.js.stream_info(subjects.DEAD_LETTERS_STREAM)).state.messages
        except NotFoundError:
            return 0

    async def list(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters."""
        found: list[DeadLetter] = []
        seq = 1
        while len(found) < limit:
            try:
                raw = await self.js.get_msg(subjects.DEAD_LETTERS_STREAM, seq, next=True,
                                            subject=f"{subjects.DEAD_LETTERS_PREFIX}.>")
            except NotFoundError:
                break
            found.append(_letter(raw))
            seq = raw.seq + 1
        return found

    async def latest(self, limit: int = LATEST_SHOWN) -> list[DeadLetter]:
        try:
            info = await self.js.stream_info(subjects.DEAD_LETTERS_STREAM)
        except NotFoundError:
            return []
        letters: list[DeadLetter] = []
        seq = info.state.last_seq
        while seq >= max(info.state.first_seq, 1) and len(letters) < limit:
            with contextlib.suppress(NotFoundError):  # replayed or discarded
                letters.append(_letter(await self.js.get_msg(subjects.DEAD_LETTERS_STREAM, seq)))
            seq -= 1
        return letters

    async def get(self, seq: int) -> DeadLetter:
        return _letter(await self.js.get_msg(subjects.DEAD_LETTERS_STREAM, seq))

    async def replay(self, seq: int) -> DeadLetter:
        """Publish the dead letter again on its original subject, with a fresh message id so that JetStream does
        not drop it as a duplicate, then remove it. Handlers are idempotent by the message's own ``event_id``,
        so a subscriber that did handle it (another consumer of the same subject) sees a harmless repeat."""
        letter = await self.get(seq)
        if not letter.subject.startswith(f"{subjects.PREFIX}."):
            raise ValueError(f"dead letter {seq} names no TuneFleet subject ({letter.subject!r})")
        await self.js.publish(letter.subject, letter.data, timeout=10,
                              headers={"Nats-Msg-Id": f"replay/{seq}/{uuid.uuid4()}", "Tunefleet-Replayed": str(seq)})
        await self.js.delete_msg(subjects.DEAD_LETTERS_STREAM, seq)
        return letter

    async def discard(self, seq: int) -> None:
        await self.js.delete_msg(subjects.DEAD_LETTERS_STREAM, seq)

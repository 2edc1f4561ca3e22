"""NATS helpers: JetStream streams created idempotently, and publishing with a de-duplication id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats
from faststream import AckPolicy, BaseMiddleware
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared import subjects
from shared.error_policy import DEAD_AFTER
from shared.events import Message
from shared.waiting import until_reachable

log = logging.getLogger(__name__)

#: How long JetStream remembers a Nats-Msg-Id to drop a duplicate publish.
DUPLICATE_WINDOW_S = 120.0

STREAM_CONFIGS = [
    StreamConfig(name=subjects.COMMANDS_STREAM, subjects=subjects.COMMANDS_SUBJECTS,
                 retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
                 max_age=7 * 24 * 3600, duplicate_window=DUPLICATE_WINDOW_S),
    StreamConfig(name=subjects.EVENTS_STREAM, subjects=subjects.EVENTS_SUBJECTS,
                 retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
                 max_age=7 * 24 * 3600, duplicate_window=DUPLICATE_WINDOW_S),
    # Kept until replayed or discarded: no age or size limit, so nothing in it is ever dropped.
    StreamConfig(name=subjects.DEAD_LETTERS_STREAM, subjects=[f"{subjects.DEAD_LETTERS_PREFIX}.>"],
                 retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S),
]

COMMANDS = JStream(subjects.COMMANDS_STREAM, declare=False)
EVENTS = JStream(subjects.EVENTS_STREAM, declare=False)


#: Every connection to NATS: reconnect for as long as it takes (a restarted server is found again), quickly.
RECONNECT: dict[str, Any] = {"max_reconnect_attempts": -1, "reconnect_time_wait": 1.0, "connect_timeout": 5}


async def connect(nats_url: str, name: str) -> nats.NATS:
    """A NATS connection that keeps reconnecting (saying so once per outage, not once per try); the first connect
    is retried until the server answers."""
    state: dict[str, Any] = {"down": False}

    async def on_error(exc: Exception) -> None:
        if not state["down"]:
            log.warning("%s: NATS connection error (%s: %s); reconnecting", name, type(exc).__name__, exc)
        state["down"] = True

    async def on_disconnected() -> None:
        client = state.get("client")
        if client is not None and (client.is_closed or client.is_draining):
            return  # closed on purpose
        if not state["down"]:
            log.warning("%s: disconnected from NATS; reconnecting", name)
        state["down"] = True

    async def on_reconnected() -> None:
        state["down"] = False
        log.info("%s: reconnected to NATS", name)

    state["client"] = await until_reachable(lambda: nats.connect(
        nats_url, name=name, error_cb=on_error, disconnected_cb=on_disconnected, reconnected_cb=on_reconnected,
        **RECONNECT), "NATS")
    return state["client"]


async def ensure_streams(nats_url: str) -> None:
    """Create or update TuneFleet's streams; safe to call from every service at every start."""
    nc = await connect(nats_url, "tunefleet-streams")
    try:
        js = nc.jetstream()
        for config in STREAM_CONFIGS:
            try:
                await js.stream_info(config.name)
                await js.update_stream(config)
            except NotFoundError:
                await js.add_stream(config)
        await _update_consumers(js)
    finally:
        await nc.close()


async def _update_consumers(js) -> None:
    """Durable consumers made by an older TuneFleet keep the acknowledgement wait and delivery limit they were made
    with (a subscriber only creates a missing one): bring them to ``durable_consumer``'s."""
    for stream in (subjects.COMMANDS_STREAM, subjects.EVENTS_STREAM):
        for info in await js.consumers_info(stream):
            config = info.config
            if not config.durable_name:
                continue
            if config.ack_wait != ACK_WAIT_S or config.max_deliver != MAX_DELIVER:
                config.ack_wait, config.max_deliver = ACK_WAIT_S, MAX_DELIVER
                try:
                    await js.add_consumer(stream, config)  # an update, for a consumer of that name
                    log.info("consumer %s of %s updated: ack_wait %.0fs, max_deliver %s", config.durable_name,
                             stream, ACK_WAIT_S, MAX_DELIVER)
                except Exception as exc:  # a server that refuses the update: the old limits stay
                    log.warning("consumer %s of %s keeps its old limits: %s", config.durable_name, stream, exc)


async def publish(broker: NatsBroker, message: Message) -> None:
    """Publish to JetStream and wait for the server's acknowledgement (the message is then durable)."""
    stream = subjects.COMMANDS_STREAM if message.subject.startswith(
        tuple(s.rstrip(">") for s in subjects.COMMANDS_SUBJECTS)) else subjects.EVENTS_STREAM
    await broker.publish(
        message.model_dump(mode="json"),
        subject=message.subject,
        headers={"Nats-Msg-Id": message.event_id},
        stream=stream,
        timeout=10,
    )


class Bus:
    """The one thing handlers need of NATS: publish a message and know it is stored."""

    def __init__(self, broker: NatsBroker):
        self.broker = broker

    async def publish(self, message: Message) -> None:
        await publish(self.broker, message)

    async def announce(self, message: Message) -> None:
        """Plain NATS, not stored: live figures that the next message supersedes (a job's cost)."""
        await self.broker.publish(message.model_dump(mode="json"), subject=message.subject)


#: Seconds JetStream waits for an ack before it delivers a message again (to another copy of the service, or to
#: this one after a restart). Short, so a killed service's messages move on quickly; a handler that takes longer
#: keeps its message with ``InProgress``.
ACK_WAIT_S = 15.0


#: JetStream's own limit, past the policy's ``DEAD_AFTER``, so that the policy always gets to bury a message.
MAX_DELIVER = DEAD_AFTER + 10


class InProgress(BaseMiddleware):
    """While a handler of a JetStream message runs, tell JetStream every ``ACK_WAIT_S / 3`` that it is still being
    worked on, so that a slow handler (a cloud create with retries) is not handed the same message twice."""

    async def consume_scope(self, call_next, msg):
        raw = getattr(msg, "raw_message", None)
        # JetStream's ack subject only: a core request's reply inbox is the requester's, and a "+WPI" sent there
        # would be taken for the answer
        if not str(getattr(raw, "reply", None) or "").startswith("$JS.ACK."):
            return await call_next(msg)

        async def beat() -> None:
            while True:
                await asyncio.sleep(ACK_WAIT_S / 3)
                with contextlib.suppress(Exception):  # NATS away: the redelivery that may follow is harmless
                    await raw.in_progress()

        heart = asyncio.create_task(beat())
        try:
            return await call_next(msg)
        finally:
            heart.cancel()


class KeyedLocks:
    """One lock per key (a job id), held while its messages are handled: a service that handles several messages
    at once still applies one job's in the order they arrive."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str):
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def durable_consumer(durable: str, workers: int = 1) -> dict:
    """Subscriber keyword arguments for a durable pull consumer, shared by every copy of a service
    (so N copies split the work), that acks after the handler and redelivers when it raises, with the delays
    of ``shared.error_policy``. JetStream would stop delivering after ``max_deliver``: the policy moves a message
    to the dead letters before that (``DEAD_AFTER``), so none is ever dropped silently. ``workers``: messages
    handled at once by this process (a handler that waits on PostgreSQL leaves the CPU to the others)."""
    extra = {"max_workers": workers} if workers > 1 else {}
    return {
        "durable": durable,
        **extra,
        # no more fetched than there are workers: a message waiting for a worker would get no in-progress acks
        "pull_sub": PullSub(batch_size=max(workers, 1), timeout=1.0),
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "config": ConsumerConfig(ack_wait=ACK_WAIT_S, max_deliver=MAX_DELIVER),
    }

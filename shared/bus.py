"""NATS helpers: JetStream streams created idempotently, and publishing with a de-duplication id."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import nats
from faststream import AckPolicy, BaseMiddleware
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsToken, NatsUserPassword, PullSub
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

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


def connect_options(nats_url: str) -> dict[str, Any]:
    """``TUNEFLEET_NATS_URL`` as nats-py takes it: one server's URL or a cluster's, comma-separated
    (``nats://u:p@a:4222,nats://u:p@b:4222``), becomes ``servers`` (without credentials) and the credentials apart
    (``user`` and ``password``, or ``token``). Apart, because a clustered server also tells its clients of its
    peers, and nats-py tries those with the connection's credentials only, not a URL's: without them every peer
    learnt so answers "Authorization Violation" (a client given one URL never got back after losing its server)."""
    urls = [u.strip() for u in nats_url.split(",") if u.strip()]
    if not urls:
        raise ValueError("TUNEFLEET_NATS_URL names no server")
    options: dict[str, Any] = {"servers": []}
    for url in urls:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        if parts.username and not {"user", "token"} & options.keys():
            if parts.password is None:
                options["token"] = unquote(parts.username)
            else:
                options["user"], options["password"] = unquote(parts.username), unquote(parts.password)
        options["servers"].append(urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])))
    return options


def broker_options(nats_url: str) -> dict[str, Any]:
    """``connect_options`` as FastStream's ``NatsBroker`` takes them: the credentials as its ``security``."""
    options = connect_options(nats_url)
    if "user" in options:
        return {"servers": options["servers"], "security": NatsUserPassword(options["user"], options["password"])}
    if "token" in options:
        return {"servers": options["servers"], "security": NatsToken(options["token"])}
    return {"servers": options["servers"]}


async def connect(nats_url: str, name: str) -> nats.NATS:
    """A NATS connection to every server ``nats_url`` names (``connect_options``), that keeps reconnecting (saying
    so once per outage, not once per try); the first connect is retried until a server answers."""
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
        **connect_options(nats_url), name=name, error_cb=on_error, disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected, **RECONNECT), "NATS")
    return state["client"]


#: Copies a clustered JetStream keeps of each stream, on as many servers: one may be lost (or restarted) and no
#: stored message is lost, and the stream goes on with the other two (a quorum).
CLUSTER_REPLICAS = 3
#: JetStream's refusals of a replica count: "replicas > 1 not supported in non-clustered mode", and "insufficient
#: resources" (fewer servers up than the copies asked for).
NOT_CLUSTERED, INSUFFICIENT_RESOURCES = 10074, 10023
#: "JetStream system temporarily unavailable": a cluster still electing its meta leader.
JETSTREAM_STARTING = 10008
#: How long ``ensure_streams`` waits for JetStream to answer (a cluster forming, or failing over) before it gives up.
JETSTREAM_WAIT_S = 120.0


def stream_replicas(server_info: dict[str, Any]) -> int:
    """The replicas TuneFleet's streams get on the server that sent ``server_info`` (its INFO, as nats-py keeps it).

    A server names its cluster in INFO when, and only when, it runs in one; and a clustered server that has
    JetStream runs clustered JetStream (a server with a cluster but no routes refuses to start JetStream at all).
    JetStream's own answers to an account say nothing of it (its account info names no cluster, and the meta
    group's state is the system account's), and ``connect_urls`` is absent where a cluster does not advertise. A
    cluster of fewer than three servers refuses three copies: ``ensure_streams`` then keeps what the stream has."""
    return CLUSTER_REPLICAS if server_info.get("cluster") else 1


async def ensure_streams(nats_url: str) -> None:
    """Create or update TuneFleet's streams, with ``stream_replicas`` copies (an existing stream with another count
    is changed to it, which JetStream does in place); safe to call from every service at every start. Waits for
    JetStream to answer for up to ``JETSTREAM_WAIT_S`` (a cluster without a meta leader yet answers "unavailable")."""
    nc = await connect(nats_url, "tunefleet-streams")
    try:
        js = nc.jetstream()
        replicas = stream_replicas(nc._server_info)  # nats-py keeps INFO there and nowhere public
        deadline, delay = time.monotonic() + JETSTREAM_WAIT_S, 0.5
        while True:
            try:
                for config in STREAM_CONFIGS:
                    await _ensure_stream(js, config, replicas)
                break
            except (APIError, nats.errors.TimeoutError) as exc:
                unavailable = isinstance(exc, ServiceUnavailableError | nats.errors.TimeoutError) or (
                    exc.err_code == JETSTREAM_STARTING)
                if not unavailable or time.monotonic() + delay > deadline:
                    raise
                log.warning("JetStream not ready (%s); trying again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await _update_consumers(js)
    finally:
        await nc.close()


async def _ensure_stream(js, config: StreamConfig, replicas: int) -> None:
    """Create ``config``'s stream, or bring it to ``config``, with ``replicas`` copies; where JetStream refuses
    that many, with those it has (one, for a new stream), saying why: the next start asks for them again."""
    try:
        current = (await js.stream_info(config.name)).config.num_replicas or 1
    except NotFoundError:
        current = None
    wanted = dataclasses.replace(config, num_replicas=replicas)
    try:
        if current is None:
            await js.add_stream(wanted)
        else:
            await js.update_stream(wanted)
    except APIError as exc:
        if replicas == 1 or exc.err_code not in (NOT_CLUSTERED, INSUFFICIENT_RESOURCES):
            raise
        keep = current or 1
        log.warning("stream %s keeps %d replica(s): JetStream refuses %d (%s)", config.name, keep, replicas,
                    exc.description)
        fallback = dataclasses.replace(config, num_replicas=keep)
        await (js.add_stream(fallback) if current is None else js.update_stream(fallback))
        return
    if current is not None and current != replicas:
        log.info("stream %s now has %d replica(s), had %d", config.name, replicas, current)


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

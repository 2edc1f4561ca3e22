"""The subscribers' error policy on a real JetStream: what may get better is redelivered with growing delays
(a PostgreSQL restart does not lose the message), what cannot is acknowledged once."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
import orjson
import pytest
from faststream.exceptions import NackMessage
from faststream.nats import NatsBroker

from shared import subjects
from shared.bus import COMMANDS, durable_consumer, publish
from shared.dead_letters import DeadLetters
from shared.error_policy import DEAD_AFTER, MAX_DELAY_S, ErrorPolicy, redelivery_delay
from shared.errors import ValidationFailed
from shared.events import TerminateJob

from .conftest import running_service


def test_delays_grow_and_stop_growing():
    assert [redelivery_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert redelivery_delay(50) == MAX_DELAY_S


async def test_failures_are_redelivered_later_and_permanent_errors_acknowledged_once(migrated, nats_url):
    calls: dict[str, list[float]] = {"flaky": [], "bad": []}

    async def wire(ctx) -> None:
        @ctx.broker.subscriber(subjects.terminate("policytest"), stream=COMMANDS,
                               **durable_consumer("policy-test"))
        async def on_command(cmd: TerminateJob) -> None:
            kind = cmd.reason
            calls[kind].append(time.monotonic())
            if kind == "flaky" and len(calls[kind]) < 3:
                raise ConnectionError("the database is restarting")  # an outage: it will get better
            if kind == "bad":
                raise ValidationFailed("this command can never work", field="x")

    async with running_service("policy-test", wire, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        for kind in ("flaky", "bad"):
            await publish(broker, TerminateJob(job_id=str(uuid.uuid4()), provider="policytest", user_id="alice",
                                               reason=kind))
        for _ in range(200):
            if len(calls["flaky"]) == 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)  # time for any redelivery of the permanent failure to show
        await broker.stop()
    flaky = calls["flaky"]
    assert len(flaky) == 3  # handled on the third delivery
    assert flaky[1] - flaky[0] >= 0.9 and flaky[2] - flaky[1] >= 1.9  # after 1 s, then 2 s
    assert len(calls["bad"]) == 1  # acknowledged, not redelivered


async def test_what_cannot_be_handled_goes_to_the_dead_letters_and_can_be_replayed(migrated, nats_url):
    """A permanent error and a body that does not validate are stored as dead letters, byte for byte, with where
    they came from and why; replaying one delivers it again to the subscriber, which now handles it."""
    handled: list[str] = []
    mended = asyncio.Event()

    async def wire(ctx) -> None:
        @ctx.broker.subscriber(subjects.terminate("dltest"), stream=COMMANDS, **durable_consumer("dl-test"))
        async def on_command(cmd: TerminateJob) -> None:
            if not mended.is_set():
                raise ValidationFailed("no such provider account", field="provider")
            handled.append(cmd.job_id)

    nc = await nats.connect(nats_url)
    letters = DeadLetters(nc)
    async with running_service("dl-test", wire, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        job_id = str(uuid.uuid4())
        await publish(broker, TerminateJob(job_id=job_id, provider="dltest", user_id="alice", reason="x"))
        await nc.jetstream().publish(subjects.terminate("dltest"), b'{"job_id": 7}', headers={"Nats-Msg-Id": "bad"})
        for _ in range(200):
            if await letters.count() == 2:
                break
            await asyncio.sleep(0.05)
        dead = await letters.list()
        assert [d.subject for d in dead] == [subjects.terminate("dltest")] * 2
        assert all(d.consumer == "dl-test" and d.deliveries == 1 for d in dead)
        assert "validation_failed: no such provider account" in dead[0].error
        assert orjson.loads(dead[0].data)["job_id"] == job_id
        assert "does not validate" in dead[1].error and dead[1].data == b'{"job_id": 7}'
        assert handled == []
        mended.set()  # what made it fail is mended: replay it
        await letters.replay(dead[0].seq)
        for _ in range(200):
            if handled:
                break
            await asyncio.sleep(0.05)
        assert handled == [job_id]
        assert [d.seq for d in await letters.list()] == [dead[1].seq]
        await letters.discard(dead[1].seq)
        assert await letters.count() == 0
        await broker.stop()
    await nc.close()


class _Sent:
    def __init__(self):
        self.published: list[dict] = []

    async def publish(self, body, **kw):
        self.published.append({"body": body, **kw})


class _Context:
    def __init__(self, broker):
        self.broker = broker

    def get(self, key):
        return self.broker if key == "broker" else None


class _Message:
    """What the policy reads of a JetStream delivery."""

    body = b"{}"

    def __init__(self, deliveries: int):
        sequence = type("Seq", (), {"stream": 41})()
        metadata = type("Meta", (), {"num_delivered": deliveries, "consumer": "c", "stream": "S",
                                     "sequence": sequence})()
        self.raw_message = type("Raw", (), {"metadata": metadata, "subject": subjects.terminate("x")})()


async def test_a_message_that_keeps_failing_is_buried_not_dropped():
    broker = _Sent()
    policy = ErrorPolicy(None, context=_Context(broker))

    async def failing(_msg):
        raise ConnectionError("the database is restarting")

    with pytest.raises(NackMessage):  # it may still get better: delivered again later
        await policy.consume_scope(failing, _Message(DEAD_AFTER - 1))
    assert broker.published == []
    await policy.consume_scope(failing, _Message(DEAD_AFTER))  # the last delivery: kept as a dead letter, then acked
    [letter] = broker.published
    assert letter["subject"] == "tunefleet.dead.c" and letter["stream"] == subjects.DEAD_LETTERS_STREAM
    assert letter["headers"]["Tunefleet-Deliveries"] == str(DEAD_AFTER)
    assert "ConnectionError" in letter["headers"]["Tunefleet-Error"]


async def test_consumers_made_by_an_older_version_get_todays_limits(nats_url):
    """A durable consumer keeps the limits it was made with; at start they are brought up to date, so JetStream
    never drops a message (max_deliver 20) before the policy buries it."""
    from nats.js.api import AckPolicy, ConsumerConfig

    from shared.bus import ACK_WAIT_S, MAX_DELIVER, ensure_streams

    await ensure_streams(nats_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_consumer(subjects.COMMANDS_STREAM, ConsumerConfig(
        durable_name="made-long-ago", ack_policy=AckPolicy.EXPLICIT, ack_wait=60, max_deliver=20,
        filter_subject=subjects.DEPLOY_REQUESTED))
    await ensure_streams(nats_url)
    config = (await js.consumer_info(subjects.COMMANDS_STREAM, "made-long-ago")).config
    await nc.close()
    assert (config.ack_wait, config.max_deliver) == (ACK_WAIT_S, MAX_DELIVER)


async def test_a_slow_core_request_gets_its_handlers_answer_not_a_heartbeat(migrated, nats_url, monkeypatch):
    """The in-progress heartbeat is for JetStream's ack subject only: sent to a core request's reply inbox, it
    would reach the requester as its answer (the catalogue's slow provider APIs did)."""
    from shared import bus

    monkeypatch.setattr(bus, "ACK_WAIT_S", 0.3)  # a beat every 0.1 s

    async def wire(ctx):
        @ctx.broker.subscriber("tunefleet.test.slow")
        async def slow(body: dict) -> dict:
            await asyncio.sleep(0.5)
            return {"answer": body["question"] * 2}

    async with running_service("slow", wire, migrated):
        nc = await nats.connect(nats_url)
        try:
            reply = await nc.request("tunefleet.test.slow", orjson.dumps({"question": 21}), timeout=5)
        finally:
            await nc.close()
    assert orjson.loads(reply.data) == {"answer": 42}

"""The subscribers' error policy on a real JetStream: what may get better is redelivered with growing delays
(a PostgreSQL restart does not lose the message), what cannot is acknowledged once."""

from __future__ import annotations

import asyncio
import time
import uuid

from faststream.nats import NatsBroker

from shared import subjects
from shared.bus import COMMANDS, durable_consumer, publish
from shared.error_policy import MAX_DELAY_S, redelivery_delay
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

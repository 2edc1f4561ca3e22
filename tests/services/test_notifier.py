"""The notifier and the gateway's webhook routes against real NATS and PostgreSQL, a real HTTP receiver on loopback
that checks each Standard Webhooks signature, and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import nats
import pytest
from aiosmtpd.controller import Controller
from faststream.nats import NatsBroker

from services.cli.embedded import free_port
from services.notifier import store
from services.notifier.mail import compose
from services.notifier.payloads import ALL, budget_notice, webhook_test_notice
from services.notifier.retry import CAP_S, RetryPolicy
from services.notifier.subscribers import wire as wire_notifier
from shared import subjects
from shared.bus import publish
from shared.config import TrainingConfig
from shared.events import BudgetAlert, BudgetAlertKind, JobCost, JobStatusChanged, Message
from shared.netpolicy import BlockedAddress
from shared.states import JobStatus
from tests.webhooks import Receiver

from .conftest import gateway_client, running_service

CONFIG = TrainingConfig.model_validate({"name": "demo", "model": {"base_model": "m"}, "data": {"dataset_id": "d"}})
COST = JobCost(cost_per_hour=2.0, cost_so_far=8.0, projected_total=9.5, budget_limit=10.0, budget_remaining=2.0)


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# Helpers ------------------------------------------------------------------------------------------------------

async def eventually(check: Callable[[], Awaitable], what: str, timeout: float = 30.0):
    """``check()``'s first truthy result, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.05)
    return result


async def republish(broker: NatsBroker, message: Message) -> None:
    """The same event again under another Nats-Msg-Id, as JetStream hands a message out again when its ack was
    lost: the notifier handles it twice."""
    await broker.publish(message.model_dump(mode="json"), subject=message.subject, stream=subjects.EVENTS_STREAM,
                         headers={"Nats-Msg-Id": str(uuid.uuid4())}, timeout=10)


async def consumed(nats_url: str, *durables: str) -> None:
    """Wait until the notifier's consumers have handled and acknowledged everything published so far."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()

        async def idle() -> bool:
            infos = [await js.consumer_info(subjects.EVENTS_STREAM, d) for d in durables]
            return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)

        await eventually(idle, f"consumers {durables} caught up")
    finally:
        await nc.close()


def status_event(user: str, status: JobStatus, **kw) -> JobStatusChanged:
    return JobStatusChanged(job_id=str(uuid.uuid4()), user_id=user, provider="local", previous=JobStatus.RUNNING,
                            status=status, cost=COST, **kw)


async def make_webhook(client, key: str, receiver: Receiver, events: list[str] | None = None) -> dict:
    body = {"url": receiver.url, **({"events": events} if events is not None else {})}
    r = await client.post("/api/webhooks", headers=auth(key), json=body)
    assert r.status_code == 201, r.text
    receiver.secret = r.json()["secret"]
    return r.json()


async def settled_deliveries(client, key: str, webhook_id: str, count: int) -> list[dict]:
    """The webhook's deliveries once there are ``count`` and none is pending."""
    async def check():
        r = await client.get(f"/api/webhooks/{webhook_id}/deliveries", headers=auth(key))
        found = r.json()
        return found if len(found) == count and all(d["status"] != "pending" for d in found) else None

    return await eventually(check, f"{count} deliveries of {webhook_id} settled")


@pytest.fixture
def notifying(migrated):
    """Settings for loopback receivers and quick retries."""
    return migrated.model_copy(update={"allow_private_urls": True, "webhook_retry_base_s": 0.05,
                                       "webhook_timeout_s": 5.0})


# Webhooks -----------------------------------------------------------------------------------------------------

async def test_a_failing_receiver_gets_the_event_once_it_answers(notifying, api_key, nats_url):
    async with running_service("notifier", wire_notifier, notifying), gateway_client(notifying) as client, \
            Receiver(answers=(500, 500, 500)) as receiver:
        webhook = await make_webhook(client, api_key, receiver, ["job.completed"])
        event = status_event("alice", JobStatus.COMPLETED, config=CONFIG, reason="done")
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, event)
        [delivery] = await settled_deliveries(client, api_key, webhook["id"], 1)
        await broker.stop()

    assert [r.answered for r in receiver.requests] == [500, 500, 500, 204]
    assert all(r.error is None for r in receiver.requests), [r.error for r in receiver.requests]
    assert {r.webhook_id for r in receiver.requests} == {event.event_id}  # stable across retries
    [accepted] = receiver.accepted()
    assert accepted.payload["type"] == "job.completed"
    data = accepted.payload["data"]
    assert data["job_id"] == event.job_id and data["job_name"] == "demo" and data["status"] == "completed"
    assert data["reason"] == "done" and data["cost"]["cost_so_far"] == 8.0 and data["cost"]["budget_limit"] == 10.0
    assert datetime.fromisoformat(accepted.payload["timestamp"]) == event.occurred_at

    assert delivery["status"] == "delivered" and delivery["attempts"] == 4 and delivery["next_attempt_at"] is None
    assert delivery["event_id"] == event.event_id and delivery["type"] == "job.completed"
    log = delivery["attempt_log"]
    assert [a["attempt"] for a in log] == [1, 2, 3, 4]
    assert [a["http_status"] for a in log] == [500, 500, 500, 204]
    assert log[0]["response_body"].startswith("not yet") and len(log[0]["response_body"].encode()) <= 1024
    assert all(a["duration_ms"] >= 0 and a["error"] is None for a in log)
    assert [a["at"] for a in log] == sorted(a["at"] for a in log)


async def test_events_reach_only_their_users_webhooks_that_asked_once(notifying, api_key, other_key, nats_url):
    async with running_service("notifier", wire_notifier, notifying), gateway_client(notifying) as client, \
            Receiver() as alices, Receiver() as bobs:
        alice_hook = await make_webhook(client, api_key, alices, ["job.failed", "job.budget_alert"])
        bob_hook = await make_webhook(client, other_key, bobs)  # every type
        running = status_event("alice", JobStatus.RUNNING)  # not among alice's types
        failed = status_event("alice", JobStatus.FAILED, config=CONFIG, reason="out of memory")
        bobs_job = status_event("bob", JobStatus.COMPLETED, config=CONFIG)
        broker = NatsBroker(nats_url)
        await broker.start()
        for event in (running, failed, bobs_job):
            await publish(broker, event)
        await republish(broker, failed)  # handled a second time: queues nothing more
        await consumed(nats_url, "notifier-status")
        alice_deliveries = await settled_deliveries(client, api_key, alice_hook["id"], 1)
        bob_deliveries = await settled_deliveries(client, other_key, bob_hook["id"], 1)
        await broker.stop()

    assert [d["event_id"] for d in alice_deliveries] == [failed.event_id]
    assert [r.webhook_id for r in alices.requests] == [failed.event_id]
    assert alices.requests[0].payload["data"]["reason"] == "out of memory"
    assert [d["event_id"] for d in bob_deliveries] == [bobs_job.event_id]
    assert [r.webhook_id for r in bobs.requests] == [bobs_job.event_id]
    assert all(r.error is None for r in alices.requests + bobs.requests)


async def test_two_notifiers_never_send_one_delivery_twice(notifying, api_key, nats_url):
    events = [status_event("alice", JobStatus.COMPLETED, config=CONFIG) for _ in range(30)]
    async with running_service("notifier", wire_notifier, notifying), \
            running_service("notifier", wire_notifier, notifying), gateway_client(notifying) as client, \
            Receiver() as receiver:
        webhook = await make_webhook(client, api_key, receiver)
        broker = NatsBroker(nats_url)
        await broker.start()
        for event in events:
            await publish(broker, event)
        await settled_deliveries(client, api_key, webhook["id"], len(events))
        await broker.stop()
    assert sorted(r.webhook_id for r in receiver.requests) == sorted(e.event_id for e in events)


async def test_gone_disables_the_webhook_and_a_dead_one_is_given_up(notifying, api_key, nats_url):
    settings = notifying.model_copy(update={"webhook_give_up_s": 0.5})
    async with running_service("notifier", wire_notifier, settings), gateway_client(settings) as client, \
            Receiver(answers=(410,)) as gone, Receiver(answers=(503,) * 1000) as down:
        gone_hook = await make_webhook(client, api_key, gone)
        down_hook = await make_webhook(client, api_key, down)
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, status_event("alice", JobStatus.FAILED, config=CONFIG))
        [gave_up_gone] = await settled_deliveries(client, api_key, gone_hook["id"], 1)
        [gave_up_down] = await settled_deliveries(client, api_key, down_hook["id"], 1)
        await broker.stop()
        disabled = (await client.get(f"/api/webhooks/{gone_hook['id']}", headers=auth(api_key))).json()
        r = await client.post(f"/api/webhooks/{gone_hook['id']}/test", headers=auth(api_key))
        assert r.status_code == 409 and "disabled" in r.json()["detail"]["message"]

    assert gave_up_gone["status"] == "failed" and gave_up_gone["attempts"] == 1
    assert disabled["disabled_at"] is not None and "410" in disabled["disabled_reason"]
    assert gave_up_down["status"] == "failed" and gave_up_down["attempts"] >= 2
    assert {a["http_status"] for a in gave_up_down["attempt_log"]} == {503}
    assert len(gone.requests) == 1


async def test_webhook_routes(notifying, migrated, api_key, other_key, pool):
    async with running_service("notifier", wire_notifier, notifying), gateway_client(notifying) as client, \
            Receiver() as receiver:
        r = await client.post("/api/webhooks", headers=auth(api_key),
                              json={"url": receiver.url, "events": ["job.completed", "job.budget_alert"],
                                    "description": "ops"})
        assert r.status_code == 201, r.text
        created = r.json()
        receiver.secret, webhook_id = created["secret"], created["id"]
        assert created["secret"].startswith("whsec_") and created["events"] == ["job.completed", "job.budget_alert"]
        assert created["url"] == receiver.url and created["description"] == "ops"

        listed = (await client.get("/api/webhooks", headers=auth(api_key))).json()
        assert [w["id"] for w in listed] == [webhook_id]
        one = (await client.get(f"/api/webhooks/{webhook_id}", headers=auth(api_key))).json()
        assert "secret" not in one and all("secret" not in w for w in listed)
        assert created["secret"] not in str(listed) + str(one)
        sealed = await pool.fetchval("SELECT sealed_secret FROM webhook_endpoints WHERE id = $1",
                                     uuid.UUID(webhook_id))
        assert created["secret"].encode() not in sealed and created["secret"][6:].encode() not in sealed

        # bob sees nothing of alice's
        assert (await client.get("/api/webhooks", headers=auth(other_key))).json() == []
        for method, path in [("GET", ""), ("DELETE", ""), ("POST", "/test"), ("GET", "/deliveries")]:
            r = await client.request(method, f"/api/webhooks/{webhook_id}{path}", headers=auth(other_key))
            assert r.status_code == 404, (method, path, r.text)

        r = await client.post(f"/api/webhooks/{webhook_id}/test", headers=auth(api_key))
        assert r.status_code == 202, r.text
        test_id = r.json()["event_id"]
        [delivery] = await settled_deliveries(client, api_key, webhook_id, 1)
        assert delivery["type"] == "webhook.test" and delivery["status"] == "delivered"
        assert [r.webhook_id for r in receiver.accepted()] == [test_id]
        assert receiver.requests[0].error is None and receiver.requests[0].payload["type"] == "webhook.test"

        r = await client.delete(f"/api/webhooks/{webhook_id}", headers=auth(api_key))
        assert r.status_code == 204
        assert (await client.get(f"/api/webhooks/{webhook_id}", headers=auth(api_key))).status_code == 404
        assert (await client.get("/api/webhooks", headers=auth(api_key))).json() == []

    # without the operator's allowance, a loopback receiver is refused
    async with gateway_client(migrated) as client:
        r = await client.post("/api/webhooks", headers=auth(api_key), json={"url": "http://127.0.0.1:9/hook"})
        assert r.status_code == 422
        assert r.json()["detail"]["field"] == "url" and "TUNEFLEET_ALLOW_PRIVATE_URLS" in r.json()["detail"]["message"]


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"url": "ftp://example.com/hook"}, "url", "https://"),
    ({"url": "example.com/hook"}, "url", "https://"),
    ({"url": "https://example.com/a hook"}, "url", "%20"),
    ({"url": "https://example.com/h", "events": ["job.exploded"]}, "events", "job.completed"),
    ({"url": "https://example.com/h", "events": []}, "events", '["*"]'),
])
async def test_bad_webhooks_get_422_naming_the_field(migrated, api_key, body, field, words):
    async with gateway_client(migrated) as client:
        r = await client.post("/api/webhooks", headers=auth(api_key), json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail["field"] == field and words in detail["message"], detail


async def test_malformed_bodies_get_422(migrated, api_key):
    async with gateway_client(migrated) as client:
        r = await client.post("/api/webhooks", headers=auth(api_key), json={"events": ["*"]})
        assert r.status_code == 422 and r.json()["detail"]["errors"][0]["field"] == "url"
        r = await client.put("/api/notifications/email", headers=auth(api_key), json={"email": "not-an-address"})
        assert r.status_code == 422 and r.json()["detail"]["errors"][0]["field"] == "email"
        r = await client.get("/api/webhooks/not-a-uuid", headers=auth(api_key))
        assert r.status_code == 422


async def test_the_address_checked_is_the_one_connected_to(migrated, api_key, nats_url, monkeypatch):
    """Without the private-URL allowance a webhook's host is resolved and checked at each send, and the request goes
    to that address (the name kept for Host): a name that later resolves privately is not called."""
    answers: dict[str, str | Exception] = {}

    def resolve(host: str, port: int) -> str:
        answer = answers[host]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr("services.notifier.urls.public_address", resolve)
    settings = migrated.model_copy(update={"webhook_retry_base_s": 0.05, "webhook_give_up_s": 0.5})
    async with running_service("notifier", wire_notifier, settings), gateway_client(settings) as client, \
            Receiver() as receiver:
        port = receiver.server.server_port
        answers["hooks.example.com"] = "127.0.0.1"  # taken for public: the name itself never resolves here
        r = await client.post("/api/webhooks", headers=auth(api_key),
                              json={"url": f"http://hooks.example.com:{port}/hook"})
        assert r.status_code == 201, r.text
        receiver.secret, webhook_id = r.json()["secret"], r.json()["id"]
        broker = NatsBroker(nats_url)
        await broker.start()
        first = status_event("alice", JobStatus.COMPLETED, config=CONFIG)
        await publish(broker, first)
        await settled_deliveries(client, api_key, webhook_id, 1)

        answers["hooks.example.com"] = BlockedAddress("hooks.example.com resolves to 10.0.0.7, a private address")
        await publish(broker, status_event("alice", JobStatus.FAILED, config=CONFIG))
        latest, _ = await settled_deliveries(client, api_key, webhook_id, 2)
        await broker.stop()

    host = f"hooks.example.com:{port}"
    assert [(r.webhook_id, r.host, r.error) for r in receiver.requests] == [(first.event_id, host, None)]
    assert latest["status"] == "failed" and latest["attempt_log"][0]["http_status"] is None
    assert "10.0.0.7" in latest["attempt_log"][0]["error"]


async def test_concurrent_claims_take_each_due_delivery_once(pool):
    endpoint = await store.create_endpoint(pool, "alice", "https://example.com/h", [ALL], None, b"sealed")
    for n in range(50):
        await store.queue_deliveries(pool, webhook_test_notice(f"event-{n}", "alice", str(endpoint["id"])))
    claims = await asyncio.gather(*(store.claim_deliveries(pool, lease_s=60) for _ in range(5)))
    claimed = [row["event_id"] for rows in claims for row in rows]
    assert sorted(claimed) == sorted(f"event-{n}" for n in range(50))  # every one, none twice
    assert await store.claim_deliveries(pool, lease_s=60) == []  # leased: not due again before the lease ends


# Email --------------------------------------------------------------------------------------------------------

class Inbox:
    def __init__(self):
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


async def test_one_email_per_event_to_the_job_or_the_users_address(notifying, api_key, nats_url, smtp, pool):
    controller, inbox = smtp
    settings = notifying.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": controller.port,
                                            "smtp_tls": "none", "smtp_from": "TuneFleet <tf@example.org>"})
    alert = BudgetAlert(job_id=str(uuid.uuid4()), user_id="alice", provider="local", kind=BudgetAlertKind.THRESHOLD,
                        threshold_pct=80, notify_email="ops@example.com", job_name="demo", cost=COST)
    completed = status_event("alice", JobStatus.COMPLETED, config=CONFIG)  # no notify_email: alice's address
    running = status_event("alice", JobStatus.RUNNING)  # no email for this one
    async with running_service("notifier", wire_notifier, settings), gateway_client(settings) as client:
        r = await client.put("/api/notifications/email", headers=auth(api_key), json={"email": "alice@example.com"})
        assert r.status_code == 200 and r.json()["email"] == "alice@example.com"
        broker = NatsBroker(nats_url)
        await broker.start()
        for event in (alert, completed, running):
            await publish(broker, event)
        await republish(broker, alert)
        await republish(broker, completed)
        await consumed(nats_url, "notifier-status", "notifier-budget-alerts")
        await eventually(lambda: _all_sent(pool), "the emails sent")
        await broker.stop()

    by_recipient = {tuple(m.rcpt_tos): m for m in inbox.messages}
    assert len(inbox.messages) == 2 and set(by_recipient) == {("ops@example.com",), ("alice@example.com",)}
    alert_mail = by_recipient[("ops@example.com",)].content.decode()
    assert "80% of its budget" in alert_mail and "demo" in alert_mail and alert.job_id in alert_mail
    assert "$8.00 of a $10.00 budget ($2.00 left)" in alert_mail
    done_mail = by_recipient[("alice@example.com",)].content.decode()
    assert "completed" in done_mail and completed.job_id in done_mail and "tf@example.org" in done_mail


async def _all_sent(pool) -> bool:
    rows = await pool.fetch("SELECT status FROM email_outbox")
    return len(rows) == 2 and all(r["status"] == "delivered" for r in rows)


# Plain functions ----------------------------------------------------------------------------------------------

def test_retries_double_with_jitter_up_to_an_hour_and_stop_after_the_give_up_window():
    policy = RetryPolicy(base_s=5, give_up_s=86400)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    for tries, longest in [(1, 5), (2, 10), (3, 20), (10, 2560), (11, CAP_S), (20, CAP_S)]:
        wait = (policy.next_attempt(tries, first, first) - first).total_seconds()
        assert longest / 2 <= wait <= longest
    late = first + timedelta(seconds=86400 - 1)
    assert policy.next_attempt(30, first, late) == first + timedelta(seconds=86400)  # one last try at the end
    assert policy.next_attempt(31, first, first + timedelta(seconds=86400)) is None
    assert policy.after(ok=False, final=True, tries=1, first_try=first, now=first).status == "failed"


def test_a_limit_reached_email_says_the_job_goes_on():
    alert = BudgetAlert(job_id="j1", user_id="alice", provider="runpod", kind=BudgetAlertKind.LIMIT_REACHED,
                        auto_stop_on_budget=False, job_name="big", cost=JobCost(cost_so_far=10, budget_limit=10,
                                                                                  budget_remaining=0))
    subject, body = compose(budget_notice(alert))
    assert "big" in subject and "goes on running" in subject
    assert "$10.00 of a $10.00 budget ($0.00 left)" in body and "j1" in body

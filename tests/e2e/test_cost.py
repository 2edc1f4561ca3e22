"""Cost through the stack, on the emulated clouds: automatic placement on the cheapest offer that fits, with the
fall-back when a provider has no machine after all; budgets that alert and stop; the duration cap."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.webhooks import Receiver

from .conftest import LAMBDA_KEY, RUNPOD_KEY, wait_for_status

pytestmark = pytest.mark.e2e

PLACEABLE = ("runpod", "lambda")


@pytest.fixture(scope="module")
def config(alice, tiny_model_dir, tmp_path_factory) -> dict:
    from trainer.tiny_model import write_sample_dataset

    data = write_sample_dataset(str(tmp_path_factory.mktemp("cost") / "data.jsonl"), rows=32, fmt="instruction")
    dataset = alice.post("/api/training/datasets", files={"file": ("d.jsonl", Path(data).read_bytes())}).json()
    assert alice.put("/api/secrets/runpod", json={"api_key": RUNPOD_KEY}).status_code == 204
    assert alice.put("/api/secrets/lambda", json={"api_key": LAMBDA_KEY}).status_code == 204
    return {"name": "cost", "model": {"base_model": tiny_model_dir, "max_seq_length": 64},
            "data": {"dataset_id": dataset["id"]},
            "training": {"max_steps": 6, "batch_size": 4, "logging_steps": 1}}


def test_auto_placement_takes_the_cheapest_run_that_fits_says_why_and_falls_back(stack, alice, runpod, config):
    estimate = alice.post("/api/training/estimate", json={"config": config})
    assert estimate.status_code == 200, estimate.text
    fitting = [c for c in estimate.json()["candidates"]
               if c["provider"] in PLACEABLE and c["fits"] and c["capacity"] is not False]
    cheapest = fitting[0]
    assert cheapest["cost_usd"] == min(c["cost_usd"] for c in fitting)
    # RunPod's cheapest run is on the emulator's price list; the test sells it out between the catalogue read and
    # the create, as happens on RunPod (the catalogue is reused for two minutes)
    assert cheapest["provider"] == "runpod", cheapest
    assert alice.get("/api/gpus").status_code == 200
    runpod.faults.sold_out = {cheapest["gpu_type"]}
    try:
        r = alice.post("/api/training/deploy/auto", json={"config": config, "preflight": False})
        assert r.status_code == 202, r.text
        answer = r.json()
        offers = answer["placement"]["offers"]
        assert (answer["provider"], answer["gpu_type"]) == ("runpod", cheapest["gpu_type"]) == (
            offers[0]["provider"], offers[0]["gpu"])
        assert [o["estimated_cost"] for o in offers] == sorted(o["estimated_cost"] for o in offers)
        assert f"placed on runpod {cheapest['gpu_type']}" in answer["message"]
        passed_over = {(x["provider"], x["gpu"]): x["reason"] for x in answer["placement"]["rejected"]}
        assert passed_over[("kaggle", "NvidiaTeslaT4")].endswith("deploy to POST /api/training/deploy/kaggle")
        job = wait_for_status(alice, answer["job_id"], {"completed"}, timeout=300)
    finally:
        runpod.faults.sold_out = set()
    placement = job["placement"]
    assert placement["chosen"] == 1 and job["attempt"] == 2
    used = placement["offers"][1]
    assert (job["provider"], job["gpu_type"]) == (used["provider"], used["gpu"])
    sold_out = next(x for x in placement["rejected"] if x["gpu"] == cheapest["gpu_type"])
    assert sold_out["reason"].startswith("no capacity when asked") and "no longer any instances" in sold_out["reason"]
    moved = next(h for h in job["history"] if h["status"] == "queued" and h["previous"] == "provisioning")
    assert f"placed on {used['provider']} {used['gpu']} instead" in moved["reason"]
    assert job["cost"]["cost_per_hour"] == pytest.approx(used["cost_per_hour"])


#: The dearest GPU of the emulated RunPod ($2.99/h): a budget of cents is spent within seconds.
DEAR_GPU = "NVIDIA H100 80GB HBM3"


def long_run(config: dict) -> dict:
    """A run that would last minutes: only a budget or the duration cap ends it early."""
    return {**config, "training": {**config["training"], "max_steps": 20_000, "logging_steps": 50}}


def eventually(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


@pytest.fixture
def receiver(alice):
    with Receiver() as hook:
        made = alice.post("/api/webhooks", json={"url": hook.url, "events": ["job.budget_alert"]})
        assert made.status_code == 201, made.text
        hook.secret, hook.id = made.json()["secret"], made.json()["id"]
        yield hook
        alice.delete(f"/api/webhooks/{hook.id}")


def alerts_of(hook: Receiver, job_id: str) -> list[dict]:
    return [r.payload for r in hook.accepted() if r.payload and r.payload["data"]["job_id"] == job_id]


def test_a_budget_alerts_once_at_its_threshold_then_stops_the_run(stack, alice, mailbox, receiver, config):
    address = "budget-stop@example.com"
    r = alice.post("/api/training/deploy/runpod", json={
        "config": long_run(config), "gpu_type": DEAR_GPU, "preflight": False, "budget_limit": 0.02,
        "alert_threshold": 50, "notify_email": address})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = wait_for_status(alice, job_id, {"budget_exceeded"}, timeout=240)
    # reports come every few seconds: the stop is at the first one at or past the budget
    assert re.fullmatch(r"cost \$0\.0[2-4] reached the budget of \$0\.02", job["status_reason"]), job["status_reason"]
    assert job["budget"] == {"budget_limit": 0.02, "alert_threshold": 50.0, "auto_stop_on_budget": True,
                             "max_duration_hours": None, "notify_email": address}
    assert job["live_cost"]["cost_so_far"] >= 0.02 and job["live_cost"]["budget_remaining"] == 0
    mails = eventually(lambda: len(mailbox.to(address)) >= 2 and mailbox.to(address), "the two emails")
    # the signed webhook: verified by the receiver, once, at half the budget
    [alert] = eventually(lambda: alerts_of(receiver, job_id), "the budget alert webhook")
    assert alert["type"] == "job.budget_alert" and alert["data"]["kind"] == "threshold"
    assert 0.01 <= alert["data"]["cost"]["cost_so_far"] < 0.02 and alert["data"]["cost"]["budget_limit"] == 0.02
    assert all(r.error is None for r in receiver.requests)
    subjects = sorted(m["Subject"] for m in mails)
    assert len(mails) == 2 and any("has used 50% of its budget" in x for x in subjects), subjects
    assert any("was stopped: it reached its budget" in x for x in subjects), subjects
    log = alice.get(f"/api/webhooks/{receiver.id}/deliveries").json()
    assert [d["status"] for d in log if d["type"] == "job.budget_alert"] == ["delivered"]


def test_without_auto_stop_a_budget_alerts_and_the_run_completes(stack, alice, mailbox, receiver, config):
    address = "alert-only@example.com"
    r = alice.post("/api/training/deploy/runpod", json={
        "config": config, "gpu_type": DEAR_GPU, "preflight": False, "budget_limit": 0.004, "alert_threshold": 50,
        "auto_stop_on_budget": False, "notify_email": address})
    assert r.status_code == 202, r.text
    job = wait_for_status(alice, r.json()["job_id"], {"completed"}, timeout=240)
    assert job["cost_usd"] > 0.004
    kinds = eventually(lambda: len(alerts_of(receiver, job["job_id"])) >= 2 and alerts_of(receiver, job["job_id"]),
                       "both budget alerts")
    assert sorted(a["data"]["kind"] for a in kinds) == ["limit_reached", "threshold"]
    mails = eventually(lambda: len(mailbox.to(address)) >= 3 and mailbox.to(address), "three emails")
    assert any("completed" in m["Subject"] for m in mails)


def test_max_duration_ends_a_local_run_with_its_own_reason(stack, alice, config):
    r = alice.post("/api/training/deploy/local", json={"config": long_run(config), "max_duration_hours": 0.004})
    assert r.status_code == 202, r.text
    job = wait_for_status(alice, r.json()["job_id"], {"stopped"}, timeout=180)
    assert re.fullmatch(r"max_duration_hours reached: it ran 0\.00\d+ h of the 0\.004 h allowed", job["status_reason"])
    assert job["progress"] is None or job["progress"] < 1  # ended long before its 20,000 steps
    assert job["budget"]["max_duration_hours"] == 0.004

"""The routes a front end written from the specification needs around its shapes: training errors kept per job,
the deployment cost fields, and data sets and configurations listed, changed and deleted (never under a live job)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from faststream.nats import NatsBroker

from services.gateway.routes.metrics import _spec_prediction, _spec_row
from services.gateway.status import cost
from services.scheduler.repository import JobRepository
from services.scheduler.subscribers import wire as wire_scheduler
from shared.budget import job_cost
from shared.bus import publish
from shared.errors import Conflict
from shared.events import WorkloadPhase
from shared.jobspec import TrainerResult
from shared.storage import key_of

from .conftest import gateway_client, running_service
from .test_gateway import INSTRUCTION_ROWS, auth, config_for, upload
from .test_scheduler import deploy, report, wait_history_length, wait_status


class NoBus:
    async def publish(self, message) -> None:
        raise AssertionError(f"nothing should be published: {message!r}")


async def _visible_job(pool, job_id: str, message: dict | None = None) -> None:
    """The gateway's record of an accepted deploy (what makes a job the user's)."""
    await pool.execute("INSERT INTO deploy_requests (job_id, user_id, provider, message, published_at) "
                       "VALUES ($1, 'alice', 'local', $2, now())", job_id, message or {})


async def test_each_failed_or_preempted_attempt_is_kept_with_its_error(migrated, pool, api_key, other_key, nats_url):
    job_id = str(uuid.uuid4())
    await _visible_job(pool, job_id)
    oom = TrainerResult(status="failed", error_type="OutOfMemoryError", error_message="CUDA out of memory: lower "
                        "training.batch_size", error_field="training.batch_size",
                        traceback="Traceback (most recent call last):\n  ...\ntorch.OutOfMemoryError: CUDA")
    async with running_service("scheduler", wire_scheduler, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, deploy(job_id))
        await wait_status(pool, job_id, "queued")
        await publish(broker, report(job_id, WorkloadPhase.RUNNING, cost_usd=0.25, cost_per_hour=1.5))
        await wait_status(pool, job_id, "running")
        await publish(broker, report(job_id, WorkloadPhase.PREEMPTED, message="the spot instance was reclaimed"))
        await wait_history_length(pool, job_id, 4)  # ... running, preempted, queued again (attempt 2)
        failed = report(job_id, WorkloadPhase.FAILED, attempt=2, result=oom, exit_code=1)
        await publish(broker, failed)
        await wait_status(pool, job_id, "failed")
        await broker.stop()
    await JobRepository(pool).record_error(failed)  # its redelivery (JetStream would drop a copy; this would not)
    async with gateway_client(migrated) as client:
        body = (await client.get(f"/api/training/jobs/{job_id}/errors", headers=auth(api_key))).json()
        status = (await client.get("/api/training/deploy/local", params={"pod_id": job_id},
                                   headers=auth(api_key))).json()
        assert (await client.get(f"/api/training/jobs/{job_id}/errors", headers=auth(other_key))).status_code == 404
    errors = body["errors"]
    assert [(e["attempt"], e["phase"], e["error_type"]) for e in errors] == [
        (1, "preempted", "Preempted"), (2, "failed", "OutOfMemoryError")]
    assert errors[0]["error_message"] == "the spot instance was reclaimed" and errors[0]["traceback"] is None
    assert errors[1]["error_message"].startswith("CUDA out of memory") and errors[1]["traceback"] == oom.traceback
    assert errors[1]["error_field"] == "training.batch_size" and errors[1]["timestamp"] == errors[1]["occurred_at"]
    assert status["status"] == "failed" and status["cost"] == {"estimated_cost": 0.25, "cost_per_hour": 1.5,
                                                               "actual_cost": 0.25}


def test_the_cost_is_projected_from_progress_until_the_job_ends():
    now = datetime.now(UTC)

    def live(so_far: float, progress: float | None, per_hour: float | None = 2.0):
        return job_cost(cost_per_hour=per_hour, cost_so_far=so_far, budget_limit=None, progress=progress,
                        running_since=now - timedelta(hours=1), now=now)

    # a quarter done after an hour: three more hours at $2/h on top of the $3 so far
    assert cost("running", live(3.0, 0.25)).model_dump() == {"estimated_cost": 9.0, "cost_per_hour": 2.0,
                                                             "actual_cost": None}
    assert cost("running", live(3.0, None)).estimated_cost is None  # nothing to project from yet
    assert cost("queued", live(0.0, 0.0, None)).estimated_cost is None
    assert cost("stopped", live(1.25, 0.5)).model_dump() == {"estimated_cost": 1.25, "cost_per_hour": 2.0,
                                                             "actual_cost": 1.25}


def test_rows_carry_the_documents_names_beside_tuneFleets():
    row = _spec_row({"step": 3, "recorded_at": "t", "grad_norm": 0.5, "samples_per_second": 9.0,
                     "gpu_memory_allocated_mb": 123.0, "loss": 1.0})
    assert row["timestamp"] == "t" and row["gradient_norm"] == 0.5 and row["samples_per_sec"] == 9.0
    assert row["gpu_memory_mb"] == 123.0 and row["grad_norm"] == 0.5  # nothing existing disappears
    eval_row = _spec_row({"step": 4, "recorded_at": "t", "eval_loss": 2.0})
    assert "gradient_norm" not in eval_row and "gpu_memory_mb" not in eval_row
    prediction = _spec_prediction({"sample_index": 2, "scores": {"bleu": 12.5}, "created_at": "t"})
    assert prediction["sample_id"] == "sample_2" and prediction["metrics"] == {"bleu": 12.5, "rouge_l": None}


async def test_data_sets_are_listed_with_their_statistics_and_deleted_unless_a_live_job_trains_on_them(
        migrated, pool, api_key, other_key):
    async with gateway_client(migrated) as client:
        first = (await upload(client, api_key, INSTRUCTION_ROWS, "first.jsonl")).json()
        second = (await upload(client, api_key, INSTRUCTION_ROWS[:4], "second.jsonl")).json()
        page = (await client.get("/api/training/datasets", headers=auth(api_key))).json()
        assert page["total_count"] == 2 and [d["id"] for d in page["datasets"]] == [second["id"], first["id"]]
        one = (await client.get(f"/api/training/datasets/{first['id']}", headers=auth(api_key))).json()
        assert one == first and one["rows"] == 8 and one["format"] == "instruction" and one["stats"]
        assert (await client.get("/api/training/datasets", params={"limit": 1, "offset": 1},
                                 headers=auth(api_key))).json()["datasets"][0]["id"] == first["id"]
        assert (await client.get(f"/api/training/datasets/{first['id']}", headers=auth(other_key))).status_code == 404
        assert (await client.delete(f"/api/training/datasets/{first['id']}",
                                    headers=auth(other_key))).status_code == 404

        stored = await pool.fetchval("SELECT path FROM datasets WHERE id = $1", uuid.UUID(first["id"]))
        path = migrated.home / "objects" / key_of(stored)  # the object store's folder (the default backend)
        assert not list(migrated.datasets_dir.glob("*.jsonl"))  # the upload's own file was only for its check
        r = await client.post("/api/training/deploy/local", headers=auth(api_key),
                              json={"config": config_for(first["id"])})
        job_id = r.json()["job_id"]  # accepted; no scheduler runs here, so it stays unfinished
        r = await client.delete(f"/api/training/datasets/{first['id']}", headers=auth(api_key))
        assert r.status_code == 409 and r.json()["detail"]["details"]["jobs"] == [job_id]
        assert Path(path).exists()
        # A deploy the scheduler has not taken in an hour is stuck: it does not hold its data set for ever.
        await pool.execute("UPDATE deploy_requests SET created_at = now() - interval '61 minutes'")
        assert (await client.delete(f"/api/training/datasets/{first['id']}", headers=auth(api_key))).status_code == 204
        assert not Path(path).exists()
        assert (await client.get(f"/api/training/datasets/{first['id']}", headers=auth(api_key))).status_code == 404
        r = await client.post("/api/training/deploy/local", headers=auth(api_key),
                              json={"config": config_for(first["id"])})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "data.dataset_id"


async def test_configurations_are_paged_replaced_and_deleted_by_their_owner_only(migrated, pool, api_key, other_key):
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()
        made = [(await client.post("/api/training/configurations", headers=auth(api_key),
                                   json={**config_for(ds["id"]), "name": f"c{i}"})).json() for i in range(3)]
        page = (await client.get("/api/training/configurations", params={"limit": 2},
                                 headers=auth(api_key))).json()
        assert page["total_count"] == 3 and [c["config"]["name"] for c in page["configurations"]] == ["c2", "c1"]
        assert (await client.get("/api/training/configurations", headers=auth(other_key))).json()["total_count"] == 0
        target = made[0]["id"]
        url = f"/api/training/configurations/{target}"
        r = await client.put(url, headers=auth(api_key), json={**config_for(ds["id"]), "name": "renamed"})
        assert r.status_code == 200 and r.json()["config"]["name"] == "renamed"
        r = await client.put(url, headers=auth(api_key), json={**config_for(ds["id"]), "training": {"lora_r": 8,
                                                                                                "lora": {"r": 8}}})
        assert r.status_code == 422 and "training.lora_r" in r.text and "training.lora.r" in r.text
        bare = {"name": "x", "model": {"base_model": "/models/tiny"}}  # names no data: bob may write it, not here
        assert (await client.put(url, headers=auth(other_key), json=bare)).status_code == 404
        assert (await client.delete(url, headers=auth(other_key))).status_code == 404

        # Deployed by the id in another spelling of the same UUID: the deploy still holds the configuration.
        r = await client.post("/api/training/deploy/local", headers=auth(api_key),
                              json={"training_config_id": target.upper()})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        for r in (await client.put(url, headers=auth(api_key), json=config_for(ds["id"])),
                  await client.delete(url, headers=auth(api_key))):
            assert r.status_code == 409 and job_id in r.json()["detail"]["message"]
        await pool.execute("UPDATE deploy_requests SET created_at = now() - interval '61 minutes'")
        assert (await client.delete(url, headers=auth(api_key))).status_code == 204
        assert (await client.get(url, headers=auth(api_key))).status_code == 404
        assert (await client.delete(url, headers=auth(api_key))).status_code == 404


async def test_a_configuration_changed_while_its_deploy_was_checked_is_not_deployed_as_it_was(migrated, pool, api_key):
    """A cloud deploy reads its configuration, then preflights for up to minutes: a PUT in between must not leave the
    job training on what the configuration said before under its id."""
    from services.gateway import deploying

    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()
        made = (await client.post("/api/training/configurations", headers=auth(api_key),
                                  json=config_for(ds["id"]))).json()
        read = await deploying.load_configuration(pool, "alice", made["id"].upper())
        assert read.saved.id == made["id"]  # one spelling of the id, whatever the request's
        r = await client.put(f"/api/training/configurations/{made['id']}", headers=auth(api_key),
                             json={**config_for(ds["id"]), "name": "changed"})
        assert r.status_code == 200
        with pytest.raises(Conflict, match="changed while this deploy was checked") as refused:
            await deploying.request_deploy(migrated, pool, NoBus(), user_id="alice", provider="local",
                                           config=read.config, saved=read.saved,
                                           provider_options={})
        assert refused.value.field == "configuration_id"
        assert await pool.fetchval("SELECT count(*) FROM deploy_requests") == 0


async def test_a_deploy_not_yet_scheduled_shows_what_it_asked_for(migrated, api_key):
    """Before the scheduler has made a job of it, the status comes from the gateway's own record of the deploy."""
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()
        r = await client.post("/api/training/deploy/local", headers=auth(api_key),
                              json={"config": config_for(ds["id"]), "budget_limit": 5})
        job_id = r.json()["job_id"]
        job = (await client.get(f"/api/training/jobs/{job_id}", headers=auth(api_key))).json()
    assert job["status"] == job["deployment_status"] == "queued" and job["budget_limit_usd"] == 5
    assert job["deployment_id"] == job["pod_id"] == job_id and job["pod_url"].endswith(f"/api/training/jobs/{job_id}")
    assert job["cost"] == {"estimated_cost": None, "cost_per_hour": 0.0, "actual_cost": None}
    assert job["metrics"] == {"epoch": None, "step": None, "loss": None, "learning_rate": None,
                              "progress_percentage": None}
    assert job["gpu_type"] is None and job["gpu_count"] == 1 and job["logs"] is None

"""A user's own API keys (made, shown once), a job retried as it was deployed, and a data set's first rows."""

from __future__ import annotations

import uuid
from datetime import datetime

from shared import subjects
from shared.events import DeployRequested

from .conftest import gateway_client
from .test_gateway import INSTRUCTION_ROWS, auth, config_for, upload

RUNPOD_KEY = "rp_SECRET_0123456789abcdef"


async def test_a_user_makes_a_key_of_their_own_shown_once(migrated, pool, api_key, other_key):
    async with gateway_client(migrated) as client:
        r = await client.post("/api/keys", headers=auth(api_key))
        assert r.status_code == 201, r.text
        made = r.json()
        assert set(made) == {"id", "prefix", "key", "created_at"}
        assert made["key"].startswith("tf_") and made["prefix"] == made["key"][:8]
        datetime.fromisoformat(made["created_at"])
        assert (await client.get("/api/models", headers=auth(made["key"]))).status_code == 200  # it works at once
        listed = (await client.get("/api/keys", headers=auth(made["key"]))).json()
        assert [k["id"] for k in listed][-1] == made["id"] and made["key"] not in str(listed)
        assert len((await client.get("/api/keys", headers=auth(other_key))).json()) == 1  # bob's are his own
        assert await pool.fetchval("SELECT user_id FROM api_keys WHERE id = $1", uuid.UUID(made["id"])) == "alice"
        r = await client.post("/api/keys")
        assert r.status_code == 401  # a key is made with a key


async def test_own_keys_are_capped(migrated, pool, api_key, monkeypatch):
    from services.gateway.routes import keys

    monkeypatch.setattr(keys, "MAX_OWN_KEYS", 2)
    async with gateway_client(migrated) as client:
        assert (await client.post("/api/keys", headers=auth(api_key))).status_code == 201
        r = await client.post("/api/keys", headers=auth(api_key))
        assert r.status_code == 429 and r.json()["detail"]["field"] == "keys"
        assert "DELETE /api/keys/{id}" in r.json()["detail"]["message"]
        second = (await client.get("/api/keys", headers=auth(api_key))).json()[1]["id"]
        assert (await client.delete(f"/api/keys/{second}", headers=auth(api_key))).status_code == 204
        assert (await client.post("/api/keys", headers=auth(api_key))).status_code == 201  # revoked ones don't count


def _same_deploy(a: dict, b: dict) -> None:
    keep = {"provider", "config", "dataset_path", "dataset_format", "dataset_rows", "provider_options",
            "budget_limit_usd", "alert_threshold_pct", "auto_stop_on_budget", "max_duration_hours", "notify_email",
            "placement"}
    assert {k: a[k] for k in keep} == {k: b[k] for k in keep}


async def test_a_job_is_retried_as_a_new_job_deployed_as_it_was(migrated, pool, api_key, other_key, recorder):
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()["id"]
        body = {"config": config_for(ds, max_steps=3), "budget_limit": 2.5, "alert_threshold": 50,
                "max_duration_hours": 1.5, "notify_email": "alice@example.com"}
        first = (await client.post("/api/training/deploy/local", headers=auth(api_key), json=body)).json()
        # Still running as far as anyone knows (no scheduler here): a retry is a new job all the same.
        r = await client.post(f"/api/training/jobs/{first['job_id']}/retry", headers=auth(api_key))
        assert r.status_code == 202, r.text
        retried = r.json()
        assert retried["job_id"] != first["job_id"] and retried["status"] == "queued"
        assert set(retried) == set(first) and retried["provider"] == "local"
        assert first["job_id"] in retried["message"] and retried["job_id"] in retried["message"]
        _, published = await recorder.wait_for(lambda m: m[0] == subjects.DEPLOY_REQUESTED
                                               and m[1]["job_id"] == retried["job_id"])
        stored = {str(r["job_id"]): r["message"] for r in await pool.fetch("SELECT * FROM deploy_requests")}
        _same_deploy(stored[first["job_id"]], stored[retried["job_id"]])
        assert published["budget_limit_usd"] == 2.5 and published["notify_email"] == "alice@example.com"
        listed = (await client.get("/api/training/jobs", headers=auth(api_key))).json()
        assert [j["job_id"] for j in listed] == [retried["job_id"], first["job_id"]]

        r = await client.post(f"/api/training/jobs/{first['job_id']}/retry", headers=auth(other_key))
        assert r.status_code == 404 and r.json()["detail"]["field"] == "job_id"  # only the owner retries
        r = await client.post(f"/api/training/jobs/{uuid.uuid4()}/retry", headers=auth(api_key))
        assert r.status_code == 404
        await pool.execute("UPDATE deploy_requests SET created_at = now() - interval '2 hours'")  # both over
        assert (await client.delete(f"/api/training/datasets/{ds}", headers=auth(api_key))).status_code == 204
        r = await client.post(f"/api/training/jobs/{first['job_id']}/retry", headers=auth(api_key))
        assert r.status_code == 422 and r.json()["detail"]["field"] == "data.dataset_id"
        assert "upload one" in r.json()["detail"]["message"]


async def test_a_cloud_retry_keeps_the_gpu_and_options_and_checks_the_credentials_again(migrated, pool, api_key):
    settings = migrated.model_copy(update={"gateway_public_url": "https://tunefleet.example.com",
                                           "ingest_public_url": "https://ingest.tunefleet.example.com"})
    async with gateway_client(settings) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()["id"]
        dataset = await pool.fetchrow("SELECT path, rows FROM datasets WHERE id = $1", uuid.UUID(ds))
        options = {"gpu_type": "NVIDIA A100 80GB PCIe", "gpu_count": 2, "volume_size_gb": 60,
                   "docker_image": None, "environment_variables": {"MODE": "x"}, "sealed_environment": "c2VhbGVk"}
        original = DeployRequested(
            job_id=str(uuid.uuid4()), user_id="alice", provider="runpod",
            config=config_for(ds, max_steps=3, gpu_count=2), dataset_path=dataset["path"],
            dataset_format="instruction", dataset_rows=dataset["rows"], provider_options=options,
            budget_limit_usd=10.0, auto_stop_on_budget=False)
        await pool.execute("INSERT INTO deploy_requests (job_id, user_id, provider, message) VALUES ($1, $2, $3, $4)",
                           original.job_id, "alice", "runpod", original.model_dump(mode="json"))
        url = f"/api/training/jobs/{original.job_id}/retry"
        r = await client.post(url, headers=auth(api_key))
        assert r.status_code == 422 and r.json()["detail"]["field"] == "provider"
        assert "PUT /api/secrets/runpod" in r.json()["detail"]["message"]
        assert (await client.put("/api/secrets/runpod", headers=auth(api_key),
                                 json={"api_key": RUNPOD_KEY})).status_code == 204
        r = await client.post(url, headers=auth(api_key))
        assert r.status_code == 202, r.text
        answer = r.json()
        assert (answer["provider"], answer["gpu_type"], answer["gpu_count"]) == ("runpod", options["gpu_type"], 2)
        message = await pool.fetchval("SELECT message FROM deploy_requests WHERE job_id = $1",
                                      uuid.UUID(answer["job_id"]))
        _same_deploy(original.model_dump(mode="json"), message)
        assert message["config_id"] is None  # made from the original's snapshot, not from a saved configuration
    unreachable = migrated.model_copy(update={"gateway_public_url": None})
    async with gateway_client(unreachable) as client:
        r = await client.post(url, headers=auth(api_key))
        assert r.status_code == 422 and r.json()["detail"]["field"] == "TUNEFLEET_GATEWAY_PUBLIC_URL"


async def test_a_data_sets_first_rows_are_previewed_for_its_owner_only(migrated, api_key, other_key):
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()
        assert ds["stats"]["token_lengths"]["counts"] == [8]  # every row is under 32 tokens
        url = f"/api/training/datasets/{ds['id']}/preview"
        r = await client.get(url, headers=auth(api_key))
        assert r.status_code == 200
        assert r.json() == {"dataset_id": ds["id"], "format": "instruction", "rows": INSTRUCTION_ROWS[:5]}
        r = await client.get(url, params={"limit": 50}, headers=auth(api_key))
        assert r.json()["rows"] == INSTRUCTION_ROWS
        assert (await client.get(url, params={"limit": 2}, headers=auth(api_key))).json()["rows"] == \
            INSTRUCTION_ROWS[:2]
        for bad in (0, 51):
            r = await client.get(url, params={"limit": bad}, headers=auth(api_key))
            assert r.status_code == 422 and r.json()["detail"]["errors"][0]["field"] == "limit"
        assert (await client.get(url, headers=auth(other_key))).status_code == 404
        r = await client.get(f"/api/training/datasets/{uuid.uuid4()}/preview", headers=auth(api_key))
        assert r.status_code == 404 and r.json()["detail"]["field"] == "dataset_id"


async def test_a_kaggle_retry_is_held_to_kaggles_limits_again(migrated, pool, api_key):
    settings = migrated.model_copy(update={"gateway_public_url": "https://tunefleet.example.com",
                                           "ingest_public_url": "https://ingest.tunefleet.example.com"})
    async with gateway_client(settings) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()["id"]
        dataset = await pool.fetchrow("SELECT path, rows FROM datasets WHERE id = $1", uuid.UUID(ds))
        assert (await client.put("/api/secrets/kaggle", headers=auth(api_key),
                                 json={"username": "alice", "key": "k" * 16})).status_code == 204
        options = {"notebook_title": "Fine-tune it", "is_private": True, "dataset_sources": [], "model_sources": [],
                   "enable_gpu": False, "enable_internet": True, "machine_shape": None, "session_timeout_s": 60}
        original = DeployRequested(
            job_id=str(uuid.uuid4()), user_id="alice", provider="kaggle", config=config_for(ds, max_steps=3),
            dataset_path=dataset["path"], dataset_format="instruction", dataset_rows=dataset["rows"],
            provider_options=options, max_duration_hours=2.0)
        await pool.execute("INSERT INTO deploy_requests (job_id, user_id, provider, message) VALUES ($1, $2, $3, $4)",
                           original.job_id, "alice", "kaggle", original.model_dump(mode="json"))
        r = await client.post(f"/api/training/jobs/{original.job_id}/retry", headers=auth(api_key))
        assert r.status_code == 202, r.text
        message = await pool.fetchval("SELECT message FROM deploy_requests WHERE job_id = $1",
                                      uuid.UUID(r.json()["job_id"]))
        assert message["provider_options"] == {**options, "session_timeout_s": 2 * 3600}  # its limits, anew
        assert message["max_duration_hours"] == 2.0

"""The gateway's HTTP API in this process, against real NATS and PostgreSQL."""

from __future__ import annotations

import json
import uuid

from shared import subjects

from .conftest import gateway_client

INSTRUCTION_ROWS = [{"instruction": f"Say {i}", "output": str(i)} for i in range(8)]
PREFERENCE_ROWS = [{"prompt": "p", "chosen": "good", "rejected": "bad"}] * 4


def jsonl(rows) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def upload(client, key, rows, name="data.jsonl"):
    return await client.post("/api/training/datasets", headers=auth(key), files={"file": (name, jsonl(rows))})


def config_for(dataset_id: str, **training) -> dict:
    return {"name": "demo", "model": {"base_model": "/models/tiny"}, "data": {"dataset_id": dataset_id},
            "training": training}


async def test_every_route_but_health_needs_a_key(migrated, api_key):
    async with gateway_client(migrated) as client:
        for method, path in [("GET", "/api/models"), ("POST", "/api/training/configurations"),
                             ("GET", f"/api/training/jobs/{uuid.uuid4()}"),
                             ("GET", f"/api/training/metrics/{uuid.uuid4()}")]:
            r = await client.request(method, path)
            assert r.status_code == 401, path
            assert "Authorization: Bearer" in r.json()["detail"]["message"]
        r = await client.get("/api/models", headers=auth("tf_wrong"))
        assert r.status_code == 401
        r = await client.get("/api/models", headers=auth(api_key))
        assert r.status_code == 200 and r.json() == []
        health = await client.get("/healthz")
        assert health.status_code == 503  # no other service runs in this test
        assert set(health.json()["not_ready"]) == set(subjects.SERVICES) - {"gateway"}
        assert {"scheduler", "provider_local", "metrics_ingest", "model_registry"} <= set(health.json()["not_ready"])


async def test_dataset_upload_reports_format_rows_and_stats(migrated, api_key):
    async with gateway_client(migrated) as client:
        r = await upload(client, api_key, INSTRUCTION_ROWS)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["format"] == "instruction" and body["rows"] == 8
        assert body["stats"]["chars_max"] >= body["stats"]["chars_min"] > 0
        uuid.UUID(body["id"])


async def test_bad_dataset_gets_422_naming_the_line(migrated, api_key):
    bad = jsonl(INSTRUCTION_ROWS[:2]) + b'\n{"instruction": "x"}\nnot json\n'
    async with gateway_client(migrated) as client:
        r = await client.post("/api/training/datasets", headers=auth(api_key), files={"file": ("bad.jsonl", bad)})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail["code"] == "dataset_invalid"
    assert {"line": 3, "problem": detail["details"]["errors"][0]["problem"]} == detail["details"]["errors"][0]
    assert "output" in detail["details"]["errors"][0]["problem"]
    assert detail["details"]["errors"][1]["line"] == 4
    assert "line 3" in detail["message"]


async def test_configuration_errors_name_the_field(migrated, api_key):
    async with gateway_client(migrated) as client:
        r = await client.post("/api/training/configurations", headers=auth(api_key),
                              json=config_for("x", lora={"r": 0}))
        assert r.status_code == 422
        fields = [e["field"] for e in r.json()["detail"]["errors"]]
        assert "training.lora.r" in fields
        r = await client.post("/api/training/configurations", headers=auth(api_key),
                              json=config_for(str(uuid.uuid4())))
        assert r.status_code == 422
        assert r.json()["detail"]["field"] == "data.dataset_id"


async def test_configuration_round_trip_and_isolation(migrated, api_key, other_key):
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()
        r = await client.post("/api/training/configurations", headers=auth(api_key),
                              json=config_for(ds["id"], learning_rate=0.001))
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        got = await client.get(f"/api/training/configurations/{cid}", headers=auth(api_key))
        assert got.json()["config"]["training"]["learning_rate"] == 0.001
        assert (await client.get(f"/api/training/configurations/{cid}", headers=auth(other_key))).status_code == 404
        # Bob cannot train on Alice's data set either.
        r = await client.post("/api/training/configurations", headers=auth(other_key), json=config_for(ds["id"]))
        assert r.status_code == 422


async def test_method_that_does_not_fit_the_data_is_refused(migrated, api_key):
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()
        r = await client.post("/api/training/deploy/local", headers=auth(api_key),
                              json={"config": config_for(ds["id"], method="dpo")})
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert detail["field"] == "training.method"
        assert "training.method='dpo' cannot train on instruction data" in detail["message"]
        pref = (await upload(client, api_key, PREFERENCE_ROWS)).json()
        r = await client.post("/api/training/deploy/local", headers=auth(api_key),
                              json={"config": config_for(pref["id"])})
        assert r.status_code == 422
        assert "training.method='sft' cannot train on preference data" in r.json()["detail"]["message"]


async def test_deploy_is_published_and_visible_only_to_its_owner(migrated, api_key, other_key, recorder):
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()
        cid = (await client.post("/api/training/configurations", headers=auth(api_key),
                                 json=config_for(ds["id"]))).json()["id"]
        r = await client.post("/api/training/deploy/local", headers=auth(api_key), json={"configuration_id": cid})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        _, cmd = await recorder.wait_for(lambda m: m[0] == subjects.DEPLOY_REQUESTED)
        assert cmd["job_id"] == job_id and cmd["dataset_rows"] == 8 and cmd["config_id"] == cid
        job = await client.get(f"/api/training/jobs/{job_id}", headers=auth(api_key))
        assert job.status_code == 200 and job.json()["status"] == "queued"
        by_pod = await client.get("/api/training/deploy/local", params={"pod_id": job_id}, headers=auth(api_key))
        assert by_pod.json()["job_id"] == job_id
        for path in (f"/api/training/jobs/{job_id}", f"/api/training/metrics/{job_id}",
                     f"/api/training/predictions/{job_id}"):
            assert (await client.get(path, headers=auth(other_key))).status_code == 404, path
        assert (await client.post(f"/api/training/jobs/{job_id}/stop", headers=auth(other_key))).status_code == 404
        listed = await client.get("/api/training/jobs", headers=auth(api_key))
        assert [j["job_id"] for j in listed.json()] == [job_id]


async def test_deploy_body_errors(migrated, api_key):
    async with gateway_client(migrated) as client:
        r = await client.post("/api/training/deploy/local", headers=auth(api_key), json={})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "configuration_id"
        r = await client.post("/api/training/deploy/local", headers=auth(api_key),
                              json={"configuration_id": str(uuid.uuid4())})
        assert r.status_code == 404
        r = await client.post("/api/training/deploy/local", headers=auth(api_key),
                              json={"configuration_id": "nope", "budget_limit": -1})
        assert r.status_code == 422 and r.json()["detail"]["errors"][0]["field"] == "budget_limit"
        r = await client.post("/api/training/deploy/nowhere", headers=auth(api_key), json={})
        assert r.status_code in (404, 405)


async def test_accepted_deploy_survives_a_bus_outage(migrated, api_key, pool, recorder):
    """The outbox: a deploy whose publish failed is published by the relay later."""
    from services.gateway.deploying import relay_outbox
    from shared.bus import Bus

    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()
        app_broker = client._transport.app.state.broker  # the gateway's own broker

        class Down:
            async def publish(self, message):
                raise ConnectionError("bus down")

        from services.gateway import deploying

        cmd = await deploying.request_deploy(migrated, pool, Down(), user_id="alice", provider="local",
                                             config=deploying.TrainingConfig.model_validate(config_for(ds["id"])),
                                             saved=None, provider_options={})
        cmd = cmd.command
        assert await pool.fetchval("SELECT published_at FROM deploy_requests WHERE job_id = $1", cmd.job_id) is None
        job = await client.get(f"/api/training/jobs/{cmd.job_id}", headers=auth(api_key))
        assert job.json()["status"] == "queued"
        await pool.execute("UPDATE deploy_requests SET created_at = now() - interval '1 minute'")
        assert await relay_outbox(pool, Bus(app_broker)) == 1
        _, sent = await recorder.wait_for(lambda m: m[0] == subjects.DEPLOY_REQUESTED)
        assert sent["job_id"] == cmd.job_id
        assert await relay_outbox(pool, Bus(app_broker)) == 0


async def test_a_cloud_deploy_that_its_workload_could_not_reach_back_is_refused(migrated, api_key):
    """Outside the sandbox, a remote workload must reach the gateway and ingest from another machine."""
    unknown = str(uuid.uuid4())
    bodies = {"runpod": {"configuration_id": unknown, "gpu_type": "NVIDIA RTX A4000"},
              "lambda": {"configuration_id": unknown, "instance_type": "gpu_1x_a10"}}
    public = {"gateway_public_url": "https://tunefleet.example.com",
              "ingest_public_url": "https://ingest.tunefleet.example.com"}
    cases = [({}, "TUNEFLEET_GATEWAY_PUBLIC_URL", "it is not set"),
             ({"gateway_public_url": "http://127.0.0.1:8000"}, "TUNEFLEET_GATEWAY_PUBLIC_URL", "loopback"),
             ({"gateway_public_url": "http://localhost:8000"}, "TUNEFLEET_GATEWAY_PUBLIC_URL", "localhost"),
             ({"gateway_public_url": "https://tunefleet.example.com", "ingest_public_url": "http://[::1]:8001"},
              "TUNEFLEET_INGEST_PUBLIC_URL", "loopback"),
             ({"gateway_public_url": "http://gateway:8000"}, "TUNEFLEET_GATEWAY_PUBLIC_URL", "only this network"),
             ({"gateway_public_url": "https://tunefleet.example.com",
               "ingest_public_url": "http://metrics-ingest.tunefleet.svc.cluster.local:8001"},
              "TUNEFLEET_INGEST_PUBLIC_URL", "only this network"),
             # on S3, the workload is handed presigned URLs of the bucket: services reach MinIO by its compose name
             ({**public, "storage_backend": "s3", "s3_bucket": "b", "s3_endpoint_url": "http://minio:9000"},
              "TUNEFLEET_S3_PUBLIC_ENDPOINT_URL", "only this network"),
             ({**public, "storage_backend": "s3", "s3_bucket": "b", "s3_endpoint_url": "http://minio:9000",
               "s3_public_endpoint_url": "http://localhost:9000"}, "TUNEFLEET_S3_PUBLIC_ENDPOINT_URL", "localhost")]
    for overrides, variable, why in cases:
        settings = migrated.model_copy(update={"sandbox": False, **overrides})
        async with gateway_client(settings) as client:
            for provider, body in bodies.items():
                r = await client.post(f"/api/training/deploy/{provider}", headers=auth(api_key), json=body)
                assert r.status_code == 422, (provider, overrides, r.text)
                detail = r.json()["detail"]
                assert detail["field"] == variable and why in detail["message"], detail
    for reachable in (public, {**public, "storage_backend": "s3", "s3_bucket": "b", "s3_endpoint_url": "http://minio:9000",
                               "s3_public_endpoint_url": "https://s3.tunefleet.example.com"},
                      {**public, "storage_backend": "s3", "s3_bucket": "b"}):  # AWS S3 itself
        async with gateway_client(migrated.model_copy(update={"sandbox": False, **reachable})) as client:
            r = await client.post("/api/training/deploy/runpod", headers=auth(api_key), json=bodies["runpod"])
            assert r.status_code == 404, r.text  # past the URL check: no such configuration


async def test_keys_are_listed_by_prefix_and_revoked_at_once(migrated, pool, api_key, other_key):
    from services.gateway.users import create_api_key

    second = await create_api_key(pool, "alice")
    async with gateway_client(migrated) as client:
        listed = (await client.get("/api/keys", headers=auth(api_key))).json()
        assert [k["prefix"] for k in listed] == [api_key[:8], second[:8]]
        assert not any(api_key in str(k) or second in str(k) for k in listed)  # prefixes only, never the key
        bobs = (await client.get("/api/keys", headers=auth(other_key))).json()
        assert len(bobs) == 1
        r = await client.delete(f"/api/keys/{bobs[0]['id']}", headers=auth(api_key))
        assert r.status_code == 404  # not alice's
        r = await client.delete(f"/api/keys/{listed[1]['id']}", headers=auth(api_key))
        assert r.status_code == 204
        assert (await client.get("/api/models", headers=auth(second))).status_code == 401
        assert (await client.get("/api/models", headers=auth(api_key))).status_code == 200
        assert (await client.get("/api/models", headers=auth(other_key))).status_code == 200
        r = await client.delete(f"/api/keys/{listed[1]['id']}", headers=auth(api_key))
        assert r.status_code == 404  # already revoked
        listed = (await client.get("/api/keys", headers=auth(api_key))).json()
        assert listed[1]["revoked_at"] is not None and listed[0]["revoked_at"] is None


async def test_a_deploys_dataset_id_fills_a_configuration_without_data_and_never_doubles_one(migrated, api_key):
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()["id"]
        doubled = await client.post("/api/training/deploy/local", headers=auth(api_key),
                                    json={"config": config_for(ds), "dataset_id": ds})
        assert doubled.status_code == 422 and doubled.json()["detail"]["field"] == "dataset_id"
        assert "dataset_id and the configuration's data.dataset_id" in doubled.json()["detail"]["message"]
        bare = {"name": "spec", "model": "/models/tiny", "training": {"num_epochs": 1, "lora_r": 4}}
        saved = await client.post("/api/training/configurations", headers=auth(api_key), json=bare)
        assert saved.status_code == 201, saved.text
        assert saved.json()["config"]["training"]["lora"]["r"] == 4  # stored in TuneFleet's names
        r = await client.post("/api/training/deploy/local", headers=auth(api_key),
                              json={"training_config_id": saved.json()["id"], "dataset_id": ds})
        assert r.status_code == 202, r.text

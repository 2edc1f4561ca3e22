"""Lambda Cloud end to end through HTTP: the instance is reached over real SSH (asyncssh on loopback), the
bundle goes up and the artifacts come back by SFTP, and the real trainer runs there."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from services.provider_lambda.api_client import LambdaClient
from services.provider_lambda.ssh import derive_key

from .conftest import LAMBDA_KEY, wait_for_status
from .test_runpod import stream_texts, wait_until

pytestmark = pytest.mark.e2e

INSTANCE = "gpu_1x_a10"


@pytest.fixture(scope="module")
def config(alice, tiny_model_dir, tmp_path_factory) -> dict:
    from trainer.tiny_model import write_sample_dataset

    data = write_sample_dataset(str(tmp_path_factory.mktemp("lc") / "data.jsonl"), rows=32, fmt="instruction")
    dataset = alice.post("/api/training/datasets", files={"file": ("d.jsonl", Path(data).read_bytes())}).json()
    assert alice.put("/api/secrets/lambda", json={"api_key": LAMBDA_KEY}).status_code == 204
    return {"name": "lc", "model": {"base_model": tiny_model_dir, "max_seq_length": 64},
            "data": {"dataset_id": dataset["id"], "eval_split": 0.2},
            "training": {"max_steps": 8, "batch_size": 4, "logging_steps": 1, "eval_steps": 8},
            "predictions": {"sample_count": 1, "frequency": "eval", "max_new_tokens": 4, "temperature": 0}}


def deploy(client, config, **extra) -> str:
    r = client.post("/api/training/deploy/lambda",
                    json={"config": config, "instance_type": INSTANCE, "preflight": False, **extra})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def instances_of(lambda_cloud, job_id):
    return [i for i in list(lambda_cloud.instances.values()) if job_id in i.name]


def test_lambda_job_runs_over_ssh_and_its_artifacts_come_back(stack, alice, lambda_cloud, config):
    lambda_cloud.faults.rate_limited, lambda_cloud.faults.http_errors = 3, 2  # retried with back-off
    job_id = deploy(alice, config)
    wait_until(lambda: instances_of(lambda_cloud, job_id), 60, "an instance")
    home = instances_of(lambda_cloud, job_id)[0].home
    job = wait_for_status(alice, job_id, {"completed"}, timeout=300)
    assert job["cost_usd"] > 0 and job["resource_id"]
    assert (home / "tunefleet-job" / "spec.json").exists()  # uploaded by SFTP
    assert "[trainer] completed" in (home / "tunefleet-job" / "train.log").read_text()
    assert "[trainer]" in job["logs_tail"]  # the log tail travelled back over SSH
    metrics = alice.get(f"/api/training/metrics/{job_id}", params={"limit": 100}).json()
    assert [m["step"] for m in metrics["metrics"]] == list(range(1, 9))
    wait_until(lambda: alice.get(f"/api/training/jobs/{job_id}").json()["model_id"], what="registration")
    model = next(m for m in alice.get("/api/models").json() if m["job_id"] == job_id)
    assert Path(model["adapter_path"], "adapter_config.json").exists()  # fetched by SFTP
    wait_until(lambda: not instances_of(lambda_cloud, job_id), what="the instance to be terminated")
    assert not any(job_id in k["name"] for k in lambda_cloud.ssh_keys.values())  # its key is removed too
    assert lambda_cloud.faults.rate_limited == 0 and lambda_cloud.faults.http_errors == 0


def test_an_instance_stuck_booting_is_terminated_and_the_job_fails_after_retries(stack, alice, lambda_cloud,
                                                                                  config):
    lambda_cloud.faults.stuck_booting = True
    try:
        job = wait_for_status(alice, deploy(alice, config), {"failed"}, timeout=180)
    finally:
        lambda_cloud.faults.stuck_booting = False
    statuses = [h["status"] for h in job["history"]]
    assert statuses.count("preempted") == 3 and statuses[-1] == "failed"
    wait_until(lambda: not instances_of(lambda_cloud, job["job_id"]), what="the stuck instances to go")


def test_no_capacity_fails_the_job_with_a_clear_reason(stack, alice, lambda_cloud, config):
    lambda_cloud.faults.no_capacity = True
    try:
        job = wait_for_status(alice, deploy(alice, config), {"failed"}, timeout=60)
    finally:
        lambda_cloud.faults.no_capacity = False
    assert "no gpu_1x_a10 capacity" in job["status_reason"]


def test_an_instance_lost_mid_run_is_preempted_then_stopped_cleanly(stack, alice, lambda_cloud, config):
    long = {**config, "training": {**config["training"], "max_steps": 100_000}}
    job_id = deploy(alice, long)
    wait_until(lambda: alice.get(f"/api/training/metrics/{job_id}").json()["total_count"] > 0, 180, "metrics")
    first = instances_of(lambda_cloud, job_id)[0]
    lambda_cloud.kill_workload(first.id)
    wait_until(lambda: any(i.id != first.id for i in instances_of(lambda_cloud, job_id)), 120, "a new attempt")
    statuses = [h["status"] for h in alice.get(f"/api/training/jobs/{job_id}").json()["history"]]
    assert "preempted" in statuses
    alice.post(f"/api/training/jobs/{job_id}/stop")
    wait_for_status(alice, job_id, {"stopped"}, timeout=120)
    wait_until(lambda: not instances_of(lambda_cloud, job_id), what="the instance to be terminated")
    assert not lambda_cloud.running_processes(first)


def test_orphan_instances_are_terminated_by_reconciliation(stack, alice, lambda_cloud, config, monkeypatch):
    async def make_orphan() -> str:
        client = LambdaClient(LAMBDA_KEY)
        name = f"tunefleet-{uuid.uuid4()}-1"
        await client.add_ssh_key(name, derive_key("another-secret", name)[1])
        return await client.launch(region="us-east-1", instance_type=INSTANCE, ssh_key_name=name, name=name)

    monkeypatch.setenv("LAMBDA_API_BASE_URL", lambda_cloud.url)
    orphan = asyncio.run(make_orphan())
    wait_until(lambda: orphan not in lambda_cloud.instances, 60, "the orphan instance to be terminated")


def test_the_lambda_key_appears_in_no_log_event_or_generated_text(stack, lambda_cloud):
    for path in list(stack.home.rglob("*")) + list(lambda_cloud.workdir.rglob("*")):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert LAMBDA_KEY.encode() not in path.read_bytes(), path
    assert LAMBDA_KEY not in stream_texts(stack)

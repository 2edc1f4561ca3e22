"""RunPod end to end through HTTP: the real start command and trainer run in the emulator's "pod"; faults
end as the provider contract says, nothing is left running, and the key appears nowhere."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import nats
import pytest

from shared import subjects

from .conftest import RUNPOD_KEY, wait_for_status

pytestmark = pytest.mark.e2e

GPU = "NVIDIA RTX A6000"


@pytest.fixture(scope="module")
def config(alice, tiny_model_dir, tmp_path_factory) -> dict:
    from trainer.tiny_model import write_sample_dataset

    data = write_sample_dataset(str(tmp_path_factory.mktemp("rp") / "data.jsonl"), rows=32, fmt="instruction")
    dataset = alice.post("/api/training/datasets", files={"file": ("d.jsonl", Path(data).read_bytes())}).json()
    assert alice.put("/api/secrets/runpod", json={"api_key": RUNPOD_KEY}).status_code == 204
    return {"name": "rp", "model": {"base_model": tiny_model_dir, "max_seq_length": 64},
            "data": {"dataset_id": dataset["id"], "eval_split": 0.2},
            "training": {"max_steps": 8, "batch_size": 4, "logging_steps": 1, "eval_steps": 8,
                         "lora": {"target_modules": "all-linear"}},
            "predictions": {"sample_count": 1, "frequency": "eval", "max_new_tokens": 4, "temperature": 0}}


def deploy(client, config, **extra) -> str:
    body = {"config": config, "gpu_type": GPU, "gpu_count": 1, "volume_size_gb": 20, "preflight": False, **extra}
    r = client.post("/api/training/deploy/runpod", json=body)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def wait_until(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def pods_of(runpod, job_id):
    return [p for p in list(runpod.pods.values()) if job_id in p.name]


def stream_texts(stack) -> str:
    async def read() -> str:
        nc = await nats.connect(f"nats://127.0.0.1:{stack.nats_port}")
        js = nc.jetstream()
        texts = []
        for stream in (subjects.COMMANDS_STREAM, subjects.EVENTS_STREAM):
            info = await js.stream_info(stream)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    texts.append((await js.get_msg(stream, seq)).data.decode())
                except Exception:  # a message removed by the stream's limits
                    continue
        await nc.close()
        return "\n".join(texts)

    return asyncio.run(read())


def test_runpod_job_trains_in_a_pod_and_comes_back_registered(stack, alice, runpod, config):
    job_id = deploy(alice, config, environment_variables={"HF_HUB_OFFLINE": "1"})
    job = wait_for_status(alice, job_id, {"completed"}, timeout=300)
    assert [h["status"] for h in job["history"]][-1] == "completed"
    assert "running" in [h["status"] for h in job["history"]]
    assert job["resource_id"] and job["cost_usd"] > 0
    by_pod = alice.get("/api/training/deploy/runpod", params={"pod_id": job["resource_id"]}).json()
    assert by_pod["job_id"] == job_id
    metrics = alice.get(f"/api/training/metrics/{job_id}", params={"limit": 100}).json()
    assert [m["step"] for m in metrics["metrics"]] == list(range(1, 9))
    assert alice.get(f"/api/training/predictions/{job_id}").json()["predictions"]
    wait_until(lambda: alice.get(f"/api/training/jobs/{job_id}").json()["model_id"], what="registration")
    model = next(m for m in alice.get("/api/models").json() if m["job_id"] == job_id)
    assert Path(model["adapter_path"], "adapter_config.json").exists()  # the artifacts came back
    wait_until(lambda: not pods_of(runpod, job_id), what="the pod to be terminated")
    # The pod got its configuration as data: a signed bundle URL, never the key or the config in its command.
    query = next(q for q in runpod.requests if "podFindAndDeployOnDemand" in q and job_id in q)
    assert "python -m trainer.bootstrap" in query and "TUNEFLEET_BUNDLE_URL" in query and "HF_HUB_OFFLINE" in query


def test_transient_api_errors_and_a_429_storm_are_retried(stack, alice, runpod, config):
    runpod.faults.rate_limited, runpod.faults.http_errors = 3, 2
    job_id = deploy(alice, config)
    wait_for_status(alice, job_id, {"completed"}, timeout=300)
    assert runpod.faults.rate_limited == 0 and runpod.faults.http_errors == 0


def test_a_pod_stuck_provisioning_is_terminated_and_the_job_fails_after_retries(stack, alice, runpod, config):
    runpod.faults.stuck_provisioning = True
    try:
        job_id = deploy(alice, config)
        job = wait_for_status(alice, job_id, {"failed"}, timeout=180)
    finally:
        runpod.faults.stuck_provisioning = False
    statuses = [h["status"] for h in job["history"]]
    assert statuses.count("preempted") == 3 and statuses[-1] == "failed"
    assert any("stuck provisioning" in (h["reason"] or "") for h in job["history"])
    wait_until(lambda: not pods_of(runpod, job_id), what="the stuck pods to be terminated")


def test_a_workload_killed_mid_run_is_reported_preempted_and_retried(stack, alice, runpod, config):
    long = {**config, "training": {**config["training"], "max_steps": 100_000}}
    job_id = deploy(alice, long)
    wait_for_status(alice, job_id, {"running"}, timeout=120)
    wait_until(lambda: alice.get(f"/api/training/metrics/{job_id}").json()["total_count"] > 0, 120, "metrics")
    first = pods_of(runpod, job_id)[0]
    runpod.kill_workload(first.id)
    wait_until(lambda: any(p.id != first.id for p in pods_of(runpod, job_id)), 120, "a second attempt")
    job = alice.get(f"/api/training/jobs/{job_id}").json()
    statuses = [h["status"] for h in job["history"]]
    killed = statuses.index("preempted")
    assert statuses[killed - 1:killed + 2] == ["running", "preempted", "queued"]
    assert "went away mid-run" in job["history"][killed]["reason"]
    assert job["attempt"] == 2
    alice.post(f"/api/training/jobs/{job_id}/stop")
    wait_for_status(alice, job_id, {"stopped"}, timeout=120)
    wait_until(lambda: not pods_of(runpod, job_id), what="the pod to be terminated after stop")
    assert not [p for p in runpod.running_processes() if job_id in p.name]


def test_a_refused_key_fails_the_job_with_the_fix(stack, alice, runpod, config):
    assert alice.put("/api/secrets/runpod", json={"api_key": "rp-wrong-key-00000"}).status_code == 204
    try:
        job_id = deploy(alice, config)
        job = wait_for_status(alice, job_id, {"failed"}, timeout=60)
    finally:
        alice.put("/api/secrets/runpod", json={"api_key": RUNPOD_KEY})
    assert "PUT /api/secrets/runpod" in job["status_reason"]


def test_orphan_pods_are_terminated_by_reconciliation(stack, alice, runpod, config):
    orphan = runpod._create({"name": f"tunefleet-{uuid.uuid4()}-1", "imageName": "x", "gpuTypeId": GPU,
                             "dockerArgs": "sleep 600"})
    wait_until(lambda: orphan.id not in runpod.pods, 60, "the orphan pod to be terminated")


def test_the_key_appears_in_no_log_event_or_generated_text(stack, runpod):
    for path in list(stack.home.rglob("*")) + list(runpod.workdir.rglob("*")):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert RUNPOD_KEY.encode() not in path.read_bytes(), path
    assert not any(RUNPOD_KEY in q for q in runpod.requests)
    assert RUNPOD_KEY not in stream_texts(stack)

"""The whole flow with the stack as processes, through HTTP only: ``tunefleet up`` with embedded NATS and
PostgreSQL, a LoRA job on a tiny model deployed on ``local``, followed to ``completed``, then a stop,
and a restart that keeps it all."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from .conftest import RunningStack, collect_events, wait_for_status

pytestmark = pytest.mark.e2e

STEPS = 12


def test_whole_flow_then_stop_then_restart(stack: RunningStack, tiny_model_dir: str, tmp_path: Path):
    from trainer.tiny_model import write_sample_dataset

    alice = stack.cli("keys", "create", "--user", "alice").strip()
    bob = stack.cli("keys", "create", "--user", "bob").strip()
    assert alice.startswith("tf_") and alice != bob
    data = tmp_path / "data.jsonl"
    write_sample_dataset(str(data), rows=48, fmt="instruction")
    client = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {alice}"}, timeout=30)
    other = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {bob}"}, timeout=30)

    dataset = client.post("/api/training/datasets", files={"file": ("data.jsonl", data.read_bytes())}).json()
    assert dataset["rows"] == 48 and dataset["format"] == "instruction"
    config = {"name": "e2e", "model": {"base_model": str(tiny_model_dir), "max_seq_length": 96},
              "data": {"dataset_id": dataset["id"], "eval_split": 0.2},
              "training": {"max_steps": STEPS, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1,
                           "eval_steps": 6, "save_steps": 6},
              "predictions": {"sample_count": 2, "frequency": "eval", "max_new_tokens": 6, "temperature": 0}}
    created = client.post("/api/training/configurations", json=config)
    assert created.status_code == 201, created.text
    deployed = client.post("/api/training/deploy/local", json={"configuration_id": created.json()["id"]})
    assert deployed.status_code == 202, deployed.text
    job_id = deployed.json()["job_id"]
    events: list = []
    listener = collect_events(client, job_id, events)

    job = wait_for_status(client, job_id, {"completed"})
    listener.join(30)
    assert [h["status"] for h in job["history"]] == ["queued", "provisioning", "running", "completed"]
    assert job["progress"] == 1.0 and job["result"]["global_step"] == STEPS

    # Metrics: one row per step the trainer logged, each with its loss; no gap, no duplicate.
    metrics = client.get(f"/api/training/metrics/{job_id}", params={"limit": 1000}).json()
    steps = [m["step"] for m in metrics["metrics"]]
    assert steps == list(range(1, STEPS + 1)) and metrics["total_count"] == STEPS
    assert all("loss" in m for m in metrics["metrics"])
    assert {m["step"] for m in metrics["metrics"] if "eval_loss" in m} == {6, 12}
    page = client.get(f"/api/training/metrics/{job_id}", params={"limit": 5, "offset": 10}).json()
    assert [m["step"] for m in page["metrics"]] == [11, 12] and page["total_count"] == STEPS

    predictions = client.get(f"/api/training/predictions/{job_id}").json()["predictions"]
    assert len(predictions) == 4 and {p["step"] for p in predictions} == {6, 12}
    assert all(p["prompt"] and p["expected"] for p in predictions)

    deadline = time.monotonic() + 60
    while not (model_id := client.get(f"/api/training/jobs/{job_id}").json()["model_id"]):
        assert time.monotonic() < deadline, "the model was never registered"
        time.sleep(0.3)
    model = next(m for m in client.get("/api/models").json() if m["job_id"] == job_id)
    assert model["id"] == model_id
    assert model["lora_r"] == 16 and model["method"] == "sft" and model["dataset_rows"] == 48
    assert Path(model["adapter_path"], "adapter_config.json").exists()

    # Live events: the stream opened with a snapshot, carried metrics, and closed on the final status.
    kinds = [e for e, _ in events]
    assert kinds[0] == "snapshot" and "metrics" in kinds and kinds[-1] == "status"
    assert events[-1][1]["status"] == "completed"

    # Another user sees nothing of it.
    for path in (f"/api/training/jobs/{job_id}", f"/api/training/metrics/{job_id}",
                 f"/api/training/predictions/{job_id}"):
        assert other.get(path).status_code == 404
    assert other.get("/api/models").json() == []

    # A long job, stopped while it runs, ends stopped.
    long = client.post("/api/training/deploy/local",
                       json={"config": {**config, "training": {**config["training"], "max_steps": 5000}}}).json()
    wait_for_status(client, long["job_id"], {"running"})
    deadline = time.monotonic() + 120
    while not client.get(f"/api/training/metrics/{long['job_id']}").json()["total_count"]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert client.post(f"/api/training/jobs/{long['job_id']}/stop").status_code == 202
    stopped = wait_for_status(client, long["job_id"], {"stopped"}, timeout=120)
    assert stopped["history"][-1]["status"] == "stopped"

    # A restart keeps every job, metric, prediction and model.
    before = {
        "job": client.get(f"/api/training/jobs/{job_id}").json()["status"],
        "metrics": client.get(f"/api/training/metrics/{job_id}", params={"limit": 1000}).json()["metrics"],
        "predictions": client.get(f"/api/training/predictions/{job_id}").json()["predictions"],
        "models": client.get("/api/models").json(),
        "stopped": stopped["status"],
    }
    assert stack.stop() == 0
    stack.start()
    after = {
        "job": client.get(f"/api/training/jobs/{job_id}").json()["status"],
        "metrics": client.get(f"/api/training/metrics/{job_id}", params={"limit": 1000}).json()["metrics"],
        "predictions": client.get(f"/api/training/predictions/{job_id}").json()["predictions"],
        "models": client.get("/api/models").json(),
        "stopped": client.get(f"/api/training/jobs/{long['job_id']}").json()["status"],
    }
    assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)

"""Every training method through the whole flow (HTTP to registered model), preflight through the API, and
prediction scores in the predictions API."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.document import LARGE, SMALL

from .conftest import wait_for_status, wait_until

pytestmark = pytest.mark.e2e

FEW_STEPS = {"max_steps": 4, "batch_size": 2, "logging_steps": 1, "save_steps": 4}


def upload(client, tmp_path, fmt: str, rows: int = 24) -> str:
    from trainer.tiny_model import write_sample_dataset

    path = write_sample_dataset(str(tmp_path / f"{fmt}.jsonl"), rows=rows, fmt=fmt)
    r = client.post("/api/training/datasets", files={"file": (f"{fmt}.jsonl", Path(path).read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def run_to_registered_model(client, config: dict) -> dict:
    r = client.post("/api/training/deploy/local", json={"config": config})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = wait_for_status(client, job_id, {"completed"}, timeout=400)
    wait_until(lambda: client.get(f"/api/training/jobs/{job_id}").json()["model_id"], 60, "registration")
    model = next(m for m in client.get("/api/models").json() if m["job_id"] == job_id)
    steps = [m["step"] for m in client.get(f"/api/training/metrics/{job_id}").json()["metrics"]]
    assert steps == [1, 2, 3, 4]
    return {"job": job, "model": model}


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_methods_train_to_a_registered_model(stack, alice, tiny_model_dir, tmp_path, method):
    dataset = upload(alice, tmp_path, "preference")
    config = {"name": method, "model": {"base_model": tiny_model_dir, "max_seq_length": 64},
              "data": {"dataset_id": dataset, "eval_split": 0.2},
              "training": {**FEW_STEPS, "method": method},
              "predictions": {"sample_count": 1, "frequency": "epoch", "max_new_tokens": 4, "temperature": 0}}
    done = run_to_registered_model(alice, config)
    assert done["model"]["method"] == method
    predictions = alice.get(f"/api/training/predictions/{done['job']['job_id']}").json()["predictions"]
    assert predictions and {"bleu", "rouge_l"} <= set(predictions[0]["scores"])
    assert 0.0 <= predictions[0]["scores"]["rouge_l"] <= 1.0


def test_rlhf_with_a_reward_model_trains_to_a_registered_model(stack, alice, tiny_model_dir, tiny_reward_model_dir,
                                                               tmp_path):
    dataset = upload(alice, tmp_path, "chat")
    config = {"name": "rlhf", "model": {"base_model": tiny_model_dir, "max_seq_length": 64},
              "data": {"dataset_id": dataset, "eval_split": 0.1},
              "training": {**FEW_STEPS, "method": "rlhf",
                           "rlhf": {"reward_model": tiny_reward_model_dir, "num_generations": 2,
                                    "max_completion_length": 6}},
              "predictions": {"enabled": False}}
    done = run_to_registered_model(alice, config)
    assert done["model"]["method"] == "rlhf"
    metrics = alice.get(f"/api/training/metrics/{done['job']['job_id']}").json()["metrics"]
    assert all("reward" in m for m in metrics)


def test_preflight_through_the_api(stack, alice, tiny_model_dir, tmp_path):
    dataset = upload(alice, tmp_path, "instruction")
    good = {"model": {"base_model": tiny_model_dir, "max_seq_length": 64}, "data": {"dataset_id": dataset},
            "training": {"max_steps": 2, "batch_size": 2}}
    report = alice.post("/api/training/preflight", json={"config": good}, timeout=300).json()
    assert report["ok"] is True and report["steps"] >= 1, report
    bad = {**good, "training": {**good["training"], "lora": {"target_modules": ["no_such_proj"]}}}
    report = alice.post("/api/training/preflight", json={"config": bad}, timeout=300).json()
    assert report["ok"] is False and report["error_field"] == "training.lora.target_modules"
    assert "no_such_proj" in report["error_message"]


def test_a_cloud_deploy_is_preflighted_and_refused_before_any_pod(stack, alice, runpod, tiny_model_dir, tmp_path):
    from .conftest import RUNPOD_KEY

    assert alice.put("/api/secrets/runpod", json={"api_key": RUNPOD_KEY}).status_code == 204
    dataset = upload(alice, tmp_path, "instruction")
    bad = {"model": {"base_model": tiny_model_dir, "max_seq_length": 64}, "data": {"dataset_id": dataset},
           "training": {"max_steps": 2, "lora": {"target_modules": ["no_such_proj"]}}}
    pods_before = len(runpod.pods)
    r = alice.post("/api/training/deploy/runpod", json={"config": bad, "gpu_type": "NVIDIA RTX A6000"}, timeout=300)
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == "training.lora.target_modules"
    assert len(runpod.pods) == pods_before


@pytest.mark.parametrize("document", [SMALL, LARGE], ids=["small-model", "large-model-qlora"])
def test_the_documents_default_configurations_train_as_written(stack, alice, tiny_model_dir, tmp_path, document):
    """The specification's two default configurations, with only the model swapped for a local one: saved as
    written, deployed by its training_config_id with a data set, trained and registered with their settings."""
    created = alice.post("/api/training/configurations", json={**document, "model": tiny_model_dir})
    assert created.status_code == 201, created.text
    stored = created.json()["config"]["training"]
    assert (stored["epochs"], stored["lora"]["r"], stored["lora"]["alpha"]) == (
        document["training"]["num_epochs"], document["training"]["lora_r"], document["training"]["lora_alpha"])
    dataset = upload(alice, tmp_path, "instruction", rows=48)
    r = alice.post("/api/training/deploy/local", json={"training_config_id": created.json()["id"],
                                                       "dataset_id": dataset})
    assert r.status_code == 202, r.text
    job = wait_for_status(alice, r.json()["job_id"], {"completed"}, timeout=600)
    wait_until(lambda: alice.get(f"/api/training/jobs/{job['job_id']}").json()["model_id"], 60, "registration")
    model = next(m for m in alice.get("/api/models").json() if m["job_id"] == job["job_id"])
    assert (model["lora_r"], model["lora_alpha"]) == (document["training"]["lora_r"],
                                                      document["training"]["lora_alpha"])
    assert job["result"]["global_step"] > 0
    assert alice.get(f"/api/training/predictions/{job['job_id']}").json()["predictions"]  # predictions.enabled


def test_a_configuration_without_data_is_refused_at_deploy_naming_the_field(stack, alice, tiny_model_dir):
    r = alice.post("/api/training/deploy/local", json={"config": {**SMALL, "model": tiny_model_dir}})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "data.dataset_id", r.text
    assert "dataset_id" in r.json()["detail"]["message"]

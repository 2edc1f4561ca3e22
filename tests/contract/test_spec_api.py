"""The specification's public API, driven through HTTP with its own bodies: a client written against the documented
shapes works unchanged. One configuration in the document's spelling trains a local job and a sandbox RunPod job
to the end; every field the document promises is checked on their real answers."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.cloudstack import RUNPOD_KEY, TERMINAL
from tests.document import LARGE, RUNPOD_DEPLOY, SMALL, interface_config

pytestmark = pytest.mark.e2e

SPEC_STATUSES = {"queued", "creating", "running", "completed", "failed"}


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def configuration(alice, tiny_model_dir, tmp_path_factory) -> dict:
    from trainer.tiny_model import write_sample_dataset

    folder = tmp_path_factory.getbasetemp() / "data-dir"  # the stack's TUNEFLEET_DATA_DIRS
    folder.mkdir(exist_ok=True)
    data = write_sample_dataset(str(folder / "contract.jsonl"), rows=40, fmt="instruction")
    r = alice.post("/api/training/configurations", json=interface_config(tiny_model_dir, data))
    assert r.status_code == 201, r.text
    return r.json()


def _follow(client, provider: str, job_id: str, timeout: float = 400) -> tuple[dict, list[dict]]:
    """Poll the specification's status route until the job ends; every answer seen is kept."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/api/training/deploy/{provider}", params={"pod_id": job_id})
        assert r.status_code == 200, r.text
        seen.append(r.json())
        if seen[-1]["status"] in TERMINAL:
            return seen[-1], seen
        time.sleep(0.5)
    raise AssertionError(f"{provider} job {job_id} did not end: {seen[-1]}")


@pytest.fixture(scope="module")
def jobs(alice, configuration) -> dict[str, dict]:
    """One local and one RunPod job from the same saved configuration, deployed with the document's bodies."""
    assert alice.put("/api/secrets/runpod", json={"api_key": RUNPOD_KEY}).status_code == 204
    deployed = {}
    r = alice.post("/api/training/deploy/local", json={"training_config_id": configuration["id"]})
    assert r.status_code == 202, r.text
    deployed["local"] = r.json()
    r = alice.post("/api/training/deploy/runpod", json={"training_config_id": configuration["id"], **RUNPOD_DEPLOY})
    assert r.status_code == 202, r.text
    deployed["runpod"] = r.json()
    # While they are live, their configuration can neither change nor go.
    for call in (alice.put(f"/api/training/configurations/{configuration['id']}", json=configuration["config"]),
                 alice.delete(f"/api/training/configurations/{configuration['id']}")):
        assert call.status_code == 409, call.text
        assert call.json()["detail"]["field"] == "configuration_id"
        assert deployed["runpod"]["job_id"] in call.json()["detail"]["details"]["jobs"]
    out = {}
    for provider, answer in deployed.items():
        final, seen = _follow(alice, provider, answer["job_id"])
        errors = alice.get(f"/api/training/jobs/{answer['job_id']}/errors").json()
        assert final["status"] == "completed", (final, errors)
        out[provider] = {"deployed": answer, "final": final, "seen": seen}
    return out


def test_a_configuration_in_the_documents_spelling_is_stored_in_tuneFleets(configuration, tiny_model_dir):
    config = configuration["config"]
    assert config["model"] == {**config["model"], "base_model": tiny_model_dir, "device_map": "cpu",
                               "torch_dtype": "float32"}
    assert config["training"]["epochs"] == 1 and config["training"]["optimizer"] == "adamw_torch"
    assert config["training"]["lora"]["r"] == 8 and config["training"]["lora"]["alpha"] == 16
    assert config["training"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert config["training"]["quantization"]["bits"] is None
    assert config["predictions"]["frequency"] == "steps"
    assert configuration["id"] != "cfg_abc123"  # the server sets the metadata
    assert _iso(configuration["created_at"]) and _iso(configuration["updated_at"])


def test_configurations_are_listed_newest_first_and_fetched_by_id(alice, configuration):
    page = alice.get("/api/training/configurations", params={"limit": 500}).json()
    assert page["total_count"] >= 1 and page["configurations"][0]["id"] == configuration["id"]
    stamps = [_iso(c["created_at"]) for c in page["configurations"]]
    assert stamps == sorted(stamps, reverse=True)
    assert alice.get(f"/api/training/configurations/{configuration['id']}").json() == configuration


@pytest.mark.parametrize("provider", ["local", "runpod"])
def test_the_deploy_answer_has_the_documented_fields(jobs, provider):
    answer = jobs[provider]["deployed"]
    assert answer["deployment_id"] == answer["job_id"] and answer["pod_id"] == answer["job_id"]
    assert answer["status"] == answer["deployment_status"] == "queued"
    assert answer["gpu_count"] == 1
    assert answer["gpu_type"] == ("NVIDIA RTX A4000" if provider == "runpod" else None)
    assert set(answer["cost"]) == {"estimated_cost", "cost_per_hour", "actual_cost"}
    assert answer["cost"]["actual_cost"] is None
    assert _iso(answer["created_at"])
    if provider == "local":
        assert answer["pod_url"].endswith(f"/api/training/jobs/{answer['job_id']}")


@pytest.mark.parametrize("provider", ["local", "runpod"])
def test_the_status_route_answers_as_documented(alice, jobs, provider):
    final = jobs[provider]["final"]
    job_id = final["job_id"]
    assert final["deployment_id"] == job_id and final["status"] == final["deployment_status"] == "completed"
    assert {a["deployment_status"] for a in jobs[provider]["seen"]} <= SPEC_STATUSES
    if provider == "runpod":
        assert final["pod_id"] == final["resource_id"] != job_id
        assert final["pod_url"] == "https://console.runpod.io/pods"
        by_pod = alice.get("/api/training/deploy/runpod", params={"pod_id": final["pod_id"]}).json()
        assert by_pod["job_id"] == job_id
        assert final["cost"]["cost_per_hour"] == pytest.approx(0.32)  # the emulated A4000's price
    else:
        assert final["pod_id"] == final["resource_id"] != job_id  # the trainer process, as pid:start time
        assert final["cost"]["cost_per_hour"] == 0
    assert isinstance(final["logs"], str) and final["logs"]
    metrics = final["metrics"]
    assert metrics["step"] == 6 and metrics["progress_percentage"] == 100
    assert metrics["epoch"] > 0 and metrics["loss"] > 0 and metrics["learning_rate"] >= 0
    cost = final["cost"]
    assert cost["actual_cost"] == cost["estimated_cost"] == final["cost_usd"]
    if provider == "runpod":
        assert cost["actual_cost"] > 0
    # Before the end, no actual cost; a projection only once there is progress to project from.
    for answer in jobs[provider]["seen"][:-1]:
        assert answer["cost"]["actual_cost"] is None
        if answer["metrics"]["progress_percentage"] in (None, 0):
            assert answer["cost"]["estimated_cost"] is None
    # The unified status carries the same fields.
    unified = alice.get(f"/api/training/jobs/{job_id}").json()
    for field in ("deployment_id", "pod_id", "pod_url", "logs", "metrics", "cost", "gpu_type", "gpu_count"):
        assert unified[field] == final[field], field


@pytest.mark.parametrize("provider", ["local", "runpod"])
def test_metrics_rows_have_the_documented_names(alice, jobs, provider):
    job_id = jobs[provider]["final"]["job_id"]
    page = alice.get(f"/api/training/metrics/{job_id}", params={"limit": 100, "offset": 0}).json()
    assert page["total_count"] == len(page["metrics"]) >= 6
    train = [m for m in page["metrics"] if "loss" in m]
    assert [m["step"] for m in train] == list(range(1, 7))
    for row in train:
        assert {"step", "epoch", "loss", "learning_rate", "timestamp", "gradient_norm"} <= set(row)
        assert row["timestamp"] == row["recorded_at"] and row["gradient_norm"] == row["grad_norm"]
    assert any(row.get("samples_per_sec") == row["samples_per_second"] for row in train if "samples_per_second" in row)
    assert any("eval_loss" in m for m in page["metrics"])


@pytest.mark.parametrize("provider", ["local", "runpod"])
def test_predictions_have_the_documented_fields(alice, jobs, provider):
    job_id = jobs[provider]["final"]["job_id"]
    predictions = alice.get(f"/api/training/predictions/{job_id}", params={"limit": 50}).json()["predictions"]
    assert predictions and {p["step"] for p in predictions} <= {3, 6}
    for p in predictions:
        assert p["sample_id"] == f"sample_{p['sample_index']}"
        assert isinstance(p["prompt"], str) and p["prompt"] and isinstance(p["generated"], str) and p["expected"]
        assert p["epoch"] > 0 and _iso(p["timestamp"])
        assert set(p["metrics"]) == {"bleu", "rouge_l"}
        assert 0 <= p["metrics"]["bleu"] <= 100 and 0 <= p["metrics"]["rouge_l"] <= 1


def _model_of(client, job_id: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [m for m in client.get("/api/models").json() if m["source_job_id"] == job_id]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} was never registered")


@pytest.mark.parametrize("provider", ["local", "runpod"])
def test_registry_entries_have_the_llm_models_shape(alice, jobs, tiny_model_dir, provider):
    final = jobs[provider]["final"]
    listed = _model_of(alice, final["job_id"])
    model = alice.get(f"/api/models/{listed['id']}").json()
    assert model == listed
    assert model["user_id"] == "alice" and model["name"] == "spec-contract"
    assert model["model_type"] == "causal_lm" and model["source"] == "training_job"
    assert model["base_model"] == tiny_model_dir and _iso(model["created_at"])
    lora = model["adapters"]["lora"]
    assert lora["r"] == 8 and lora["alpha"] == 16 and Path(lora["path"], "adapter_config.json").exists()
    metadata = model["metadata"]
    assert metadata["training_method"] == "sft" and metadata["final_loss"] > 0
    assert 0 < metadata["training_time_hours"] < 1 and metadata["dataset_size"] == 40
    assert metadata["total_cost_usd"] == pytest.approx(final["cost_usd"])
    assert alice.get("/api/models/not-a-model").status_code == 422
    assert alice.get("/api/models/00000000-0000-4000-8000-000000000000").status_code == 404


@pytest.mark.parametrize("provider", ["local", "runpod"])
def test_a_completed_job_lists_no_training_errors(alice, jobs, provider):
    job_id = jobs[provider]["final"]["job_id"]
    assert alice.get(f"/api/training/jobs/{job_id}/errors").json() == {"job_id": job_id, "errors": []}


def test_a_configuration_no_live_job_uses_can_be_replaced_then_deleted(alice, jobs, configuration):
    config_id = configuration["id"]
    changed = {**configuration["config"], "name": "spec-contract-2"}
    r = alice.put(f"/api/training/configurations/{config_id}", json=changed)
    assert r.status_code == 200, r.text
    assert r.json()["config"]["name"] == "spec-contract-2"
    assert _iso(r.json()["updated_at"]) > _iso(configuration["updated_at"])
    assert alice.delete(f"/api/training/configurations/{config_id}").status_code == 204
    assert alice.get(f"/api/training/configurations/{config_id}").status_code == 404


def test_the_openapi_lists_the_documents_shapes(alice):
    spec = alice.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    body = spec["paths"]["/api/training/configurations"]["post"]["requestBody"]["content"]["application/json"]
    assert [e["value"] for e in body["examples"].values()] == [SMALL, LARGE]
    promised = {
        "DeploymentResponse": {"deployment_id", "pod_id", "pod_url", "status", "gpu_type", "gpu_count", "cost",
                               "created_at"},
        "JobPublic": {"deployment_id", "pod_id", "status", "pod_url", "logs", "metrics", "cost"},
        "DeploymentCost": {"estimated_cost", "cost_per_hour", "actual_cost"},
        "DeploymentMetrics": {"epoch", "step", "loss", "learning_rate", "progress_percentage"},
        "PredictionPublic": {"sample_id", "epoch", "step", "prompt", "generated", "expected", "metrics"},
        "ModelPublic": {"id", "user_id", "name", "model_type", "source", "source_job_id", "base_model", "adapters",
                        "created_at", "metadata"},
        "ModelMetadata": {"training_method", "final_loss", "training_time_hours", "dataset_size", "total_cost_usd"},
        "JobError": {"error_type", "error_message", "traceback", "timestamp"},
        "RunPodDeploymentRequest": {"training_config_id", "gpu_type", "gpu_count", "docker_image", "volume_size_gb",
                                    "environment_variables", "budget_limit"},
    }
    for name, fields in promised.items():
        assert name in schemas, name
        assert fields <= set(schemas[name]["properties"]), (name, fields - set(schemas[name]["properties"]))

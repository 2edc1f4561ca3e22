"""Serving, end to end through HTTP: tiny models trained on ``local``, then served on the built-in server (by the
job's own ``serve`` section), on a real vLLM (CPU) and on the Ollama emulator, and called through the gateway's
OpenAI-compatible /v1 with the official ``openai`` client."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.cloudstack import vllm_python

from .conftest import RunningStack, wait_for_status

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _train(client: httpx.Client, base_model: str, folder: Path, name: str, **extra) -> dict:
    """A short LoRA job on local; returns its registered model."""
    from trainer.tiny_model import write_sample_dataset

    data = write_sample_dataset(str(folder / f"{name}.jsonl"), rows=32, fmt="chat")
    dataset = client.post("/api/training/datasets", files={"file": ("d.jsonl", Path(data).read_bytes())}).json()
    lora = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], **extra.pop("lora", {})}
    config = {"name": name, "model": {"base_model": base_model, "max_seq_length": 64},
              "data": {"dataset_id": dataset["id"], "eval_split": 0.2},
              "training": {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1,
                           "eval_steps": 3, "save_steps": 3, "lora": lora},
              "predictions": {"enabled": False}, **extra}
    job = client.post("/api/training/deploy/local", json={"config": config})
    assert job.status_code == 202, job.text
    job_id = job.json()["job_id"]
    wait_for_status(client, job_id, {"completed"}, timeout=300)
    deadline = time.monotonic() + 60
    while not (model_id := client.get(f"/api/training/jobs/{job_id}").json()["model_id"]):
        assert time.monotonic() < deadline, "the model was never registered"
        time.sleep(0.3)
    return client.get(f"/api/models/{model_id}").json()


def _ready(client: httpx.Client, serving_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while (record := client.get(f"/api/servings/{serving_id}").json())["state"] == "starting":
        assert time.monotonic() < deadline, f"serving {serving_id} never left starting"
        time.sleep(0.5)
    return record


def _cli(stack: RunningStack, key: str, *args: str) -> subprocess.CompletedProcess:
    env = {**stack.env, "TUNEFLEET_URL": stack.url, "TUNEFLEET_API_KEY": key, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def _chat_both_ways(ai: openai.OpenAI, name: str) -> str:
    """A non-streamed and a streamed answer through the gateway, equal at temperature 0."""
    answer = ai.chat.completions.create(model=name, messages=QUESTION, max_tokens=6, temperature=0)
    assert answer.model == name and answer.choices[0].message.role == "assistant"
    text = answer.choices[0].message.content
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in ai.chat.completions.create(
        model=name, messages=QUESTION, max_tokens=6, temperature=0, stream=True) if chunk.choices)
    assert text and streamed == text
    completion = ai.completions.create(model=name, prompt="The capital of Peru is", max_tokens=4, temperature=0)
    assert completion.choices[0].text
    return text


@pytest.fixture(scope="module")
def serving_model(tmp_path_factory) -> str:
    """vLLM's CPU attention needs a head dim of at least 32: hidden 128 with 2 heads."""
    from trainer.tiny_model import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("serving-model") / "model"), hidden_size=128, heads=2)


@pytest.fixture(scope="module")
def users(stack: RunningStack):
    keys = [stack.cli("keys", "create", "--user", name).strip() for name in ("sofia", "tomas")]
    clients = [httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {k}"}, timeout=60) for k in keys]
    yield keys, clients
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def trained(users, serving_model, tmp_path_factory) -> dict:
    """One job that asks to be served on the built-in server when it completes."""
    (_, (client, _)) = users
    return _train(client, serving_model, tmp_path_factory.mktemp("serving-data"), "capitals",
                  serve={"server_type": "builtin", "name": "capitals-auto"})


def test_builtin_served_by_the_jobs_own_serve_section(stack: RunningStack, users, trained: dict):
    (sofia_key, tomas_key), (client, other) = users
    deadline = time.monotonic() + 120
    while not (found := [s for s in client.get("/api/servings").json() if s["name"] == "capitals-auto"]):
        assert time.monotonic() < deadline, "the job's serve section started no serving"
        time.sleep(0.5)
    record = _ready(client, found[0]["id"])
    assert record["state"] == "ready", record["reason"]
    assert record["server_type"] == "builtin" and record["model_id"] == trained["id"]
    assert record["base_url"] == f"{stack.url}/v1"
    smoke = record["engine"]["details"]["smoke"]
    assert smoke["answer"] != smoke["base_answer"]

    ai = openai.OpenAI(base_url=record["base_url"], api_key=sofia_key)
    assert [m.id for m in ai.models.list()] == ["capitals-auto"]
    _chat_both_ways(ai, "capitals-auto")

    # Another user's key reaches none of it.
    stranger = openai.OpenAI(base_url=record["base_url"], api_key=tomas_key)
    with pytest.raises(openai.NotFoundError):
        stranger.chat.completions.create(model="capitals-auto", messages=QUESTION, max_tokens=2)
    assert list(stranger.models.list()) == []
    assert other.get(f"/api/servings/{record['id']}").status_code == 404
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=record["base_url"], api_key="tf_not_a_key").models.list()

    # The terminal's chat goes the same way, and prints the streamed answer.
    chat = _cli(stack, sofia_key, "chat", "capitals-auto", "-m", "What is the capital of France?", "--temperature",
                "0", "--max-tokens", "6")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() == _chat_both_ways(ai, "capitals-auto").strip()
    assert _cli(stack, tomas_key, "chat", "capitals-auto", "-m", "hi").returncode == 1

    # The adapter as a tar.
    download = client.get(f"/api/models/{trained['id']}/download")
    assert download.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
        names = tar.getnames()
    assert any(n.endswith("/adapter_config.json") for n in names) and any(n.endswith(".safetensors") for n in names)
    assert other.get(f"/api/models/{trained['id']}/download").status_code == 404

    # Exports for other engines: the merged model, and one GGUF file (q8_0), made in the background.
    for body in ({"format": "merged"}, {"format": "gguf", "quantize": "q8_0"}):
        started = client.post(f"/api/models/{trained['id']}/export", json=body)
        assert started.status_code == 202 and started.json()["status"] in ("running", "done"), started.text
    assert client.post(f"/api/models/{trained['id']}/export", json={"format": "merged", "quantize": "q8_0"}
                       ).json()["detail"]["field"] == "quantize"
    wait_until = time.monotonic() + 180
    while {e["key"]: e["status"] for e in client.get(f"/api/models/{trained['id']}/exports").json()} != {
            "merged": "done", "gguf-q8_0": "done"}:
        exports = client.get(f"/api/models/{trained['id']}/exports").json()
        assert time.monotonic() < wait_until and not any(e["status"] == "failed" for e in exports), exports
        time.sleep(0.5)
    gguf = client.get(f"/api/models/{trained['id']}/download", params={"export": "gguf-q8_0"})
    assert gguf.status_code == 200 and gguf.content[:4] == b"GGUF"
    merged = client.get(f"/api/models/{trained['id']}/download", params={"export": "merged"})
    with tarfile.open(fileobj=io.BytesIO(merged.content)) as tar:
        assert any(n.endswith("/config.json") for n in tar.getnames())
    assert other.get(f"/api/models/{trained['id']}/exports").status_code == 404

    # Any checkpoint can be listed, downloaded and served, not only the last.
    checkpoints = client.get(f"/api/training/jobs/{trained['job_id']}/checkpoints").json()
    assert [c["step"] for c in checkpoints] == [3, 6] and all(c["eval_loss"] is not None for c in checkpoints)
    assert other.get(f"/api/training/jobs/{trained['job_id']}/checkpoints").status_code == 404
    early = client.get(f"/api/models/{trained['id']}/download", params={"checkpoint": checkpoints[0]["name"]})
    with tarfile.open(fileobj=io.BytesIO(early.content)) as tar:
        assert any(n.endswith("checkpoint-3/adapter_config.json") for n in tar.getnames())
    step3 = _ready(client, client.post("/api/training/deploy", json={
        "job_id": trained["job_id"], "server_type": "builtin", "name": "capitals-step3",
        "checkpoint_path": checkpoints[0]["name"]}).json()["id"])
    assert step3["state"] == "ready", step3["reason"]
    assert ai.chat.completions.create(model="capitals-step3", messages=QUESTION, max_tokens=4).choices
    outside = client.post("/api/training/deploy", json={"job_id": trained["job_id"], "server_type": "builtin",
                                                         "checkpoint_path": "../../"})
    assert outside.status_code == 422 and outside.json()["detail"]["field"] == "checkpoint_path"
    assert client.delete(f"/api/servings/{step3['id']}").json()["state"] == "stopped"

    # DELETE stops the engine's process.
    pid = record["engine"]["details"]["pid"]
    assert psutil.pid_exists(pid)
    stopped = client.delete(f"/api/servings/{record['id']}").json()
    assert stopped["state"] == "stopped"
    deadline = time.monotonic() + 30
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the built-in server's process did not end"
        time.sleep(0.2)
    with pytest.raises(openai.NotFoundError):
        ai.chat.completions.create(model="capitals-auto", messages=QUESTION, max_tokens=2)


def test_vllm_serves_adapters_of_one_base_on_one_server(stack: RunningStack, users, trained: dict, serving_model,
                                                        tmp_path_factory):
    if vllm_python() is None:
        assert not os.environ.get("CI"), "vLLM must be installed in CI (scripts/install makes .serving/vllm)"
        pytest.skip("vLLM is not installed here: tunefleet serving install vllm --venv .serving/vllm")
    (sofia_key, _), (client, _) = users
    # A rank-64 adapter first: vLLM starts with --max-lora-rank 64 (its default of 16 would refuse it).
    wide = _train(client, serving_model, tmp_path_factory.mktemp("wide"), "capitals-wide", lora={"r": 64})
    deployed = client.post("/api/training/deploy", json={"model_id": wide["id"], "server_type": "vllm",
                                                          "config": {"max_model_len": 256}})
    assert deployed.status_code == 202, deployed.text
    assert deployed.json()["state"] == "starting"
    first = _ready(client, deployed.json()["id"])
    assert first["state"] == "ready", first["reason"]
    details = first["engine"]["details"]
    assert details["max_lora_rank"] == 64 and details["smoke"]["answer"] != details["smoke"]["base_answer"]

    # An adapter of the same base joins that server at run time (/v1/load_lora_adapter), without a restart.
    second = _ready(client, client.post("/api/training/deploy", json={
        "job_id": trained["job_id"], "server_type": "vllm", "name": "capitals-vllm",
        "config": {"max_model_len": 256}}).json()["id"])
    assert second["state"] == "ready", second["reason"]
    assert second["engine"]["base_url"] == first["engine"]["base_url"]
    assert second["engine"]["details"]["pid"] == details["pid"]
    assert second["engine"]["details"]["adapters_on_server"] == 2
    ai = openai.OpenAI(base_url=second["base_url"], api_key=sofia_key)
    assert {m.id for m in ai.models.list()} >= {"capitals-wide", "capitals-vllm"}
    _chat_both_ways(ai, "capitals-vllm")
    wide_answer = ai.chat.completions.create(model="capitals-wide", messages=QUESTION, max_tokens=6, temperature=0)
    assert wide_answer.choices[0].message.content

    # A DoRA adapter is refused for vLLM with the reason and the fix.
    dora = _train(client, serving_model, tmp_path_factory.mktemp("dora"), "capitals-dora", lora={"use_dora": True})
    refused = client.post("/api/training/deploy", json={"model_id": dora["id"], "server_type": "vllm"})
    assert refused.status_code == 422 and "DoRA" in refused.json()["detail"]["message"]

    # The server stops with its last adapter.
    pid = details["pid"]
    assert client.delete(f"/api/servings/{second['id']}").json()["state"] == "stopped"
    assert psutil.pid_exists(pid)
    with pytest.raises(openai.NotFoundError):
        ai.chat.completions.create(model="capitals-vllm", messages=QUESTION, max_tokens=2)
    assert client.delete(f"/api/servings/{first['id']}").json()["state"] == "stopped"
    deadline = time.monotonic() + 60
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "vLLM did not stop with its last adapter"
        time.sleep(0.5)


def test_ollama_creates_the_model_from_the_uploaded_weights(stack: RunningStack, users, trained: dict, ollama):
    (sofia_key, _), (client, _) = users
    # From the terminal: the model by its name, followed until ready.
    served = _cli(stack, sofia_key, "serve", "capitals", "--engine", "ollama", "--name", "capitals-ollama")
    assert served.returncode == 0, served.stdout + served.stderr
    assert "ready" in served.stdout and "capitals-ollama" in served.stdout
    record = next(s for s in client.get("/api/servings").json() if s["name"] == "capitals-ollama")
    assert record["state"] == "ready", record["reason"]
    smoke = record["engine"]["details"]["smoke"]
    assert smoke["answer"] != smoke["base_answer"]
    tags = httpx.get(f"{ollama.url}/api/tags").json()["models"]
    created = record["engine"]["details"]["ollama_model"]
    assert created in {m["name"].removesuffix(":latest") for m in tags}
    _chat_both_ways(openai.OpenAI(base_url=record["base_url"], api_key=sofia_key), "capitals-ollama")
    assert client.delete(f"/api/servings/{record['id']}").json()["state"] == "stopped"
    tags = httpx.get(f"{ollama.url}/api/tags").json()["models"]
    assert created not in {m["name"].removesuffix(":latest") for m in tags}

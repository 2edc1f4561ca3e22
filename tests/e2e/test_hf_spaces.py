"""Hugging Face Spaces end to end through HTTP, against the Hub emulator: the Space's fixed files build FROM the
stock image, its start command answers on the app port and runs the real bootstrap, which installs the trainer
from the bundle; the adapter is pushed to a model repo; the Space ends paused, its cost recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import HF_TOKEN, HF_USER, cloud_job_config, wait_for_status, wait_until

pytestmark = pytest.mark.e2e

PRICE = 0.40  # t4-small, $/h, as the emulator's live hardware list gives it


@pytest.fixture(scope="module")
def config(alice, tiny_model_dir, tmp_path_factory) -> dict:
    assert alice.put("/api/secrets/huggingface", json={"token": HF_TOKEN}).status_code == 204
    return cloud_job_config(alice, tmp_path_factory.mktemp("hfs"), "hfs", tiny_model_dir, max_steps=6)


def deploy(client, config, name: str, **extra) -> str:
    body = {"config": config, "space_name": f"{HF_USER}/{name}", "gpu_tier": "t4-small", "preflight": False,
            **extra}
    r = client.post("/api/training/deploy/hf-spaces", json=body)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def test_a_job_trains_in_a_space_pushes_its_adapter_and_ends_paused_with_its_cost(stack, alice, hf_hub, config):
    job_id = deploy(alice, config, "tf-run", push_to_hub=f"{HF_USER}/tf-adapter")
    job = wait_for_status(alice, job_id, {"completed"}, timeout=400)
    assert "running" in [h["status"] for h in job["history"]]
    metrics = alice.get(f"/api/training/metrics/{job_id}", params={"limit": 100}).json()
    assert [m["step"] for m in metrics["metrics"]] == list(range(1, 7))
    assert alice.get(f"/api/training/predictions/{job_id}").json()["predictions"]
    wait_until(lambda: alice.get(f"/api/training/jobs/{job_id}").json()["model_id"], what="registration")
    model = next(m for m in alice.get("/api/models").json() if m["job_id"] == job_id)
    assert Path(model["adapter_path"], "adapter_config.json").exists()

    pushed = hf_hub.repos[("model", f"{HF_USER}/tf-adapter")]
    assert pushed.private and "adapter_config.json" in pushed.files
    assert any(p.endswith(".safetensors") for p in pushed.lfs)
    assert f"{HF_USER}/tf-adapter" in (job.get("status_reason") or job.get("message") or str(job))

    space_id = f"{HF_USER}/tf-run"
    wait_until(lambda: hf_hub.spaces[space_id].stage == "PAUSED", what="the Space to be paused")
    assert hf_hub.stages(space_id)[:4] == ["NO_APP_FILE", "BUILDING", "APP_STARTING", "RUNNING"]
    billed_s, billed_usd = hf_hub.billed(space_id)
    job = alice.get(f"/api/training/jobs/{job_id}").json()
    # The runner bills each price from the poll that saw it: within a few polls of what the Hub billed.
    assert job["cost_usd"] > 0
    assert job["cost_usd"] == pytest.approx(billed_usd, abs=PRICE * 10 / 3600)
    assert billed_usd == pytest.approx(PRICE * billed_s / 3600)


def test_a_stop_pauses_the_space(stack, alice, hf_hub, config):
    job_id = deploy(alice, config, "tf-stop")
    wait_for_status(alice, job_id, {"running"}, timeout=200)
    assert alice.post(f"/api/training/jobs/{job_id}/stop").status_code in (200, 202)
    wait_for_status(alice, job_id, {"stopped"}, timeout=60)
    wait_until(lambda: hf_hub.spaces[f"{HF_USER}/tf-stop"].stage == "PAUSED", what="the Space to be paused")


def test_a_build_error_a_402_a_read_only_and_a_bad_token_fail_naming_the_fix(stack, alice, hf_hub, config):
    hf_hub.faults.build_error = "pip: no matching distribution found for torch==0.0.0"
    try:
        job = wait_for_status(alice, deploy(alice, config, "tf-broken"), {"failed"}, timeout=120)
    finally:
        hf_hub.faults.build_error = None
    assert "BUILD_ERROR" in job["status_reason"] and "no matching distribution" in job["status_reason"]

    hf_hub.faults.payment_required = True
    try:
        job = wait_for_status(alice, deploy(alice, config, "tf-unpaid"), {"failed"}, timeout=60)
    finally:
        hf_hub.faults.payment_required = False
    assert "payment method" in job["status_reason"] and "t4-small" in job["status_reason"]
    assert f"{HF_USER}/tf-unpaid" not in hf_hub.spaces

    hf_hub.faults.read_only.add(HF_USER)
    try:
        job = wait_for_status(alice, deploy(alice, config, "tf-read-only"), {"failed"}, timeout=60)
    finally:
        hf_hub.faults.read_only.discard(HF_USER)
    assert "read-only" in job["status_reason"] and f"{HF_USER}/tf-read-only" in job["status_reason"]
    assert f"{HF_USER}/tf-read-only" not in hf_hub.spaces

    assert alice.put("/api/secrets/huggingface", json={"token": "hf_not_a_token_of_anyone"}).status_code == 204
    try:
        job = wait_for_status(alice, deploy(alice, config, "tf-bad-token"), {"failed"}, timeout=60)
    finally:
        assert alice.put("/api/secrets/huggingface", json={"token": HF_TOKEN}).status_code == 204
    assert "PUT /api/secrets/huggingface" in job["status_reason"] and "hf_not_a_token" not in job["status_reason"]
    assert f"{HF_USER}/tf-bad-token" not in hf_hub.spaces


def test_no_secret_in_a_pushed_file_a_log_or_a_stream(stack, hf_hub):
    from .test_runpod import stream_texts

    secrets = [HF_TOKEN.encode()]
    for space in hf_hub.spaces.values():
        secrets += [v.encode() for v in space.secrets.values() if len(v) > 8]
    for repo in hf_hub.repos.values():
        for data in repo.files.values():
            assert not any(s in data for s in secrets), repo.id
    for path in [*stack.home.rglob("*"), *hf_hub.workdir.rglob("*.log")]:
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert HF_TOKEN.encode() not in path.read_bytes(), path
    texts = stream_texts(stack)
    assert HF_TOKEN not in texts and not any(s.decode() in texts for s in secrets)

"""Kaggle end to end through HTTP, against an emulator at least as strict as Kaggle: the fixed kernel script runs
on a stock machine (Python and torch, no TuneFleet) in its own mount namespace, with internet (the bundle is
fetched through a signed URL, reports are pushed) or without (the bundle and a wheelhouse travel as a private
dataset, and the metrics come from the kernel's output). Nothing pushed to Kaggle holds a secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import KAGGLE_KEY, KAGGLE_USER, cloud_job_config, wait_for_status, wait_until

pytestmark = pytest.mark.e2e


MODEL_SLUG = "tiny-llama-weights"


@pytest.fixture(scope="module")
def model_dataset(kaggle_cloud, tiny_model_dir, tmp_path_factory, monkeypatch_module) -> str:
    """The tiny model as alice's private Kaggle dataset (through the real client): a kernel sees only /kaggle."""
    import asyncio
    import shutil

    from services.provider_kaggle.api_client import KaggleClient
    from shared.credentials import KaggleCredentials

    folder = tmp_path_factory.mktemp("kaggle-model") / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "dataset-metadata.json").write_text(json.dumps(
        {"id": f"{KAGGLE_USER}/{MODEL_SLUG}", "title": "tiny llama weights", "licenses": [{"name": "other"}]}))
    monkeypatch_module.setenv("KAGGLE_API_BASE_URL", kaggle_cloud.url)
    client = KaggleClient(KaggleCredentials(username=KAGGLE_USER, key=KAGGLE_KEY))
    made = asyncio.run(client.call("create_dataset", folder=str(folder)))
    assert made["error"] == "", made
    return f"{KAGGLE_USER}/{MODEL_SLUG}"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def config(alice, model_dataset, tmp_path_factory) -> dict:
    assert alice.put("/api/secrets/kaggle", json={"username": KAGGLE_USER, "key": KAGGLE_KEY}).status_code == 204
    return cloud_job_config(alice, tmp_path_factory.mktemp("kg"), "kg", f"/kaggle/input/{MODEL_SLUG}", max_steps=6)


def deploy(client, config, **extra) -> str:
    body = {"config": config, "notebook_title": "TuneFleet e2e job", "enable_gpu": False, "preflight": False,
            "dataset_sources": [f"{KAGGLE_USER}/{MODEL_SLUG}"], **extra}
    r = client.post("/api/training/deploy/kaggle", json=body)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def kernels_of(kaggle, job_id: str) -> list:
    return [k for k in [*kaggle.kernels.values(), *kaggle.deleted_kernels] if any(
        job_id in str(s.request) for s in k.sessions) or _job_of(k.slug) == job_id]


def _job_of(slug: str) -> str | None:
    from services.provider_kaggle.kernel import parse_slug

    installation = slug.split("-")[1] if slug.count("-") >= 3 else ""
    parsed = parse_slug(slug, installation)
    return parsed[0] if parsed else None


def pushed_files(kaggle) -> list[Path]:
    """Every file TuneFleet gave Kaggle: kernel texts, and the datasets' files (not what a kernel wrote on its own
    disk: its /kaggle/working output and /tmp, where it unpacks the bundle it fetched from TuneFleet)."""
    roots = [kaggle.workdir / "kernels", kaggle.workdir / "datasets", kaggle.workdir / "blobs"]
    return [p for root in roots if root.exists() for p in root.rglob("*")
            if p.is_file() and not {"working", "tmp"} & set(p.relative_to(root).parts)
            and not p.name.endswith(".log")]


def assert_completed_with_everything(alice, job_id: str, job: dict) -> None:
    metrics = alice.get(f"/api/training/metrics/{job_id}", params={"limit": 100}).json()
    steps = [m["step"] for m in metrics["metrics"] if m.get("loss") is not None or "eval_loss" not in m]
    assert sorted(steps) == sorted(set(steps)) and set(range(1, 7)) <= set(steps), metrics
    assert alice.get(f"/api/training/predictions/{job_id}").json()["predictions"]
    wait_until(lambda: alice.get(f"/api/training/jobs/{job_id}").json()["model_id"], what="registration")
    model = next(m for m in alice.get("/api/models").json() if m["job_id"] == job_id)
    assert Path(model["adapter_path"], "adapter_config.json").exists()
    assert job["cost_usd"] == 0


def test_with_internet_the_kernel_fetches_its_bundle_trains_and_pushes_its_reports(stack, alice, kaggle_cloud,
                                                                                    config):
    job_id = deploy(alice, config, enable_internet=True)
    job = wait_for_status(alice, job_id, {"completed"}, timeout=500)
    assert_completed_with_everything(alice, job_id, job)
    [kernel] = kernels_of(kaggle_cloud, job_id)
    assert kernel.deleted and kernel.latest.request["enableInternet"] is True
    assert kernel.latest.request["isPrivate"] is True and kernel.latest.request["kernelType"] == "script"
    spec = json.loads((stack.home / "bundles" / job_id / "attempt-1" / "spec.json").read_text())
    assert spec["ingest_token"]  # the bundle, fetched from TuneFleet, holds it; nothing given to Kaggle does
    for path in pushed_files(kaggle_cloud):
        text = path.read_bytes()
        assert KAGGLE_KEY.encode() not in text and spec["ingest_token"].encode() not in text


def test_without_internet_the_bundle_and_wheelhouse_travel_as_a_dataset(stack, alice, kaggle_cloud, config):
    job_id = deploy(alice, config, enable_internet=False)
    job = wait_for_status(alice, job_id, {"completed"}, timeout=900)
    assert_completed_with_everything(alice, job_id, job)
    [kernel] = kernels_of(kaggle_cloud, job_id)
    assert kernel.latest.request["enableInternet"] is False
    log = (kernel.latest.folder / "working" / "output" / "train.log").read_text()
    assert "--no-index" in log and "[trainer] completed" in log
    # Nothing could reach ingest: every metric came from the spool in the kernel's output, once (checked above).
    [pushed_spec] = [p for p in pushed_files(kaggle_cloud) if p.name == "spec.json" and job_id in p.read_text()]
    spec = json.loads(pushed_spec.read_text())
    assert spec["ingest_url"] is None and spec["ingest_token"] is None and spec["checkpoint_upload_url"] is None
    assert "metrics-spool.jsonl" in {p.name for p in (kernel.latest.folder / "working" / "output").iterdir()}
    for path in pushed_files(kaggle_cloud):
        assert KAGGLE_KEY.encode() not in path.read_bytes()


def test_a_stop_deletes_the_kernel_and_ends_its_session(stack, alice, kaggle_cloud, config):
    long = {**config, "training": {**config["training"], "max_steps": 100_000, "eval_steps": 100_000}}
    job_id = deploy(alice, long, enable_internet=True)
    wait_for_status(alice, job_id, {"running"}, timeout=300)
    alice.post(f"/api/training/jobs/{job_id}/stop")
    wait_for_status(alice, job_id, {"stopped"}, timeout=60)
    wait_until(lambda: all(k.deleted for k in kernels_of(kaggle_cloud, job_id)), what="the kernel to be deleted")
    wait_until(lambda: not kaggle_cloud.running_processes(), what="the session to end")


def test_bad_credentials_and_an_exhausted_gpu_quota_fail_with_the_fix(stack, alice, kaggle_cloud, config):
    assert alice.put("/api/secrets/kaggle", json={"username": KAGGLE_USER, "key": "not-the-key-0000"}
                     ).status_code == 204
    try:
        job = wait_for_status(alice, deploy(alice, config), {"failed"}, timeout=120)
        assert "PUT /api/secrets/kaggle" in job["status_reason"]
    finally:
        assert alice.put("/api/secrets/kaggle", json={"username": KAGGLE_USER, "key": KAGGLE_KEY}
                         ).status_code == 204
    kaggle_cloud.faults.gpu_quota_exhausted = True
    try:
        job = wait_for_status(alice, deploy(alice, config, enable_gpu=True), {"failed"}, timeout=120)
    finally:
        kaggle_cloud.faults.gpu_quota_exhausted = False
    assert "weekly GPU quota" in job["status_reason"]


def test_what_kaggle_would_refuse_or_cut_off_is_refused_before_the_push(stack, alice, kaggle_cloud, hf_hub, config,
                                                                         tiny_model_dir):
    pushes = len(kaggle_cloud.pushed())
    hub = {**config, "model": {**config["model"], "base_model": "tiny-org/kaggle-llama"}}
    r = alice.post("/api/training/deploy/kaggle", json={"config": hub, "notebook_title": "Offline hub model",
                                                         "enable_internet": False, "preflight": False})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "model.base_model"
    assert "model_sources" in r.json()["detail"]["message"]
    r = alice.post("/api/training/deploy/kaggle", json={"config": config, "notebook_title": "Too long a run",
                                                         "max_duration_hours": 13, "preflight": False,
                                                         "dataset_sources": [f"{KAGGLE_USER}/{MODEL_SLUG}"]})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "max_duration_hours"
    # A run the estimator puts past the 12-hour session on Kaggle's T4s (the model's config comes from the Hub).
    hf_hub.add_model("tiny-org/kaggle-llama", {name: Path(tiny_model_dir, name).read_bytes()
                                               for name in ("config.json", "tokenizer.json", "tokenizer_config.json")})
    endless = {**hub, "training": {**config["training"], "max_steps": 10**11, "eval_steps": 10**11}}
    r = alice.post("/api/training/deploy/kaggle", json={"config": endless, "notebook_title": "An endless run",
                                                         "enable_gpu": True, "preflight": False})
    assert r.status_code == 422, r.text
    assert r.json()["detail"]["field"] == "training.max_steps" and "session limit" in r.json()["detail"]["message"]
    assert len(kaggle_cloud.pushed()) == pushes

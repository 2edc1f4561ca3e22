"""The stack as processes with its files in an S3 bucket (``rclone serve s3`` on loopback, which checks every
signature): a data set uploaded through the gateway is an object of the bucket and nowhere on the server's disk,
its preview is a ranged read, the preflight and a local job train on it, and deleting it deletes the object. A RunPod
pod fetches its bundle from the bucket and puts its output there through presigned URLs (signed for the host the
workloads reach), never through the gateway, and holds no storage credential; a Lambda instance, which gets its
bundle over SSH, trains as on the folder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.objectstore import ACCESS_KEY, SECRET_KEY, S3Server

from .conftest import (
    LAMBDA_KEY,
    PROVISIONING_TIMEOUT_S,
    RUNPOD_KEY,
    RunningStack,
    cloud_job_config,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory, s3, tiny_model_dir, runpod, lambda_cloud, mirror, stock_images):
    bucket = s3.new_bucket()
    stack = RunningStack(tmp_path_factory.mktemp("s3-stack") / "home", {
        "TUNEFLEET_STORAGE_BACKEND": "s3", "TUNEFLEET_S3_BUCKET": bucket, "TUNEFLEET_S3_ENDPOINT_URL": s3.endpoint,
        # workloads reach the bucket by another name than the services do, as a cluster's MinIO by its Ingress
        "TUNEFLEET_S3_PUBLIC_ENDPOINT_URL": public_endpoint(s3),
        "TUNEFLEET_S3_PREFIX": "team-a", "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "TUNEFLEET_MODEL_DIRS": str(tmp_path_factory.getbasetemp()), "TUNEFLEET_ALLOW_PRIVATE_URLS": "true",
        "RUNPOD_API_BASE_URL": runpod.url, "LAMBDA_API_BASE_URL": lambda_cloud.url,
        "TUNEFLEET_LAMBDA_SSH_PORT": str(lambda_cloud.ssh_port), "TUNEFLEET_CLOUD_POLL_INTERVAL_S": "0.5",
        "TUNEFLEET_PROVISIONING_TIMEOUT_S": str(PROVISIONING_TIMEOUT_S), "TUNEFLEET_SANDBOX": "true",
        "TUNEFLEET_WORKLOAD_PYTHON_URL": mirror, "TUNEFLEET_WORKLOAD_PYTHON_SHA256": stock_images.python_sha256})
    stack.start()
    stack.bucket = bucket
    yield stack
    stack.stop()


def public_endpoint(s3: S3Server) -> str:
    return s3.endpoint.replace("127.0.0.1", "localhost")


def objects(s3: S3Server, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", []))


def test_a_data_set_lives_in_the_bucket_and_a_local_job_trains_on_it(s3_stack, s3, tiny_model_dir, tmp_path: Path):
    from trainer.tiny_model import write_sample_dataset

    key = s3_stack.cli("keys", "create", "--user", "s3-user").strip()
    data = Path(write_sample_dataset(str(tmp_path / "d.jsonl"), rows=24, fmt="instruction"))
    with httpx.Client(base_url=s3_stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as api:
        dataset = api.post("/api/training/datasets", files={"file": ("d.jsonl", data.read_bytes())}).json()
        assert objects(s3, s3_stack.bucket) == [f"team-a/datasets/{dataset['id']}.jsonl"]
        home = s3_stack.home
        assert not list(home.glob("datasets/*.jsonl")) and not (home / "objects" / "datasets").exists()

        preview = api.get(f"/api/training/datasets/{dataset['id']}/preview", params={"limit": 3}).json()
        assert preview["rows"] == [json.loads(line) for line in data.read_text().splitlines()[:3]]

        config = {"name": "on-s3", "model": {"base_model": tiny_model_dir, "max_seq_length": 64},
                  "data": {"dataset_id": dataset["id"], "eval_split": 0.2},
                  "training": {"max_steps": 6, "batch_size": 4, "logging_steps": 1},
                  "predictions": {"enabled": False}}
        preflight = api.post("/api/training/preflight", json={"config": config})
        assert preflight.status_code == 200 and preflight.json()["ok"], preflight.text
        job = api.post("/api/training/deploy/local", json={"config": config})
        assert job.status_code == 202, job.text
        done = wait_for_status(api, job.json()["job_id"], {"completed", "failed"}, timeout=300)
        assert done["status"] == "completed", done.get("status_reason")
        steps = [m["step"] for m in api.get(f"/api/training/metrics/{done['job_id']}",
                                            params={"limit": 100}).json()["metrics"]]
        assert steps == list(range(1, 7))

        # the output too, for the services of other machines (the registry, the gateways)
        output = f"team-a/artifacts/{done['job_id']}/attempt-1/output.tar.gz"
        assert api.delete(f"/api/training/datasets/{dataset['id']}").status_code == 204
        assert objects(s3, s3_stack.bucket) == [output]
        assert api.get(f"/api/training/datasets/{dataset['id']}/preview").status_code == 404


@pytest.fixture(scope="module")
def s3_user(s3_stack):
    key = s3_stack.cli("keys", "create", "--user", "s3-cloud-user").strip()
    with httpx.Client(base_url=s3_stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as api:
        assert api.put("/api/secrets/runpod", json={"api_key": RUNPOD_KEY}).status_code == 204
        assert api.put("/api/secrets/lambda", json={"api_key": LAMBDA_KEY}).status_code == 204
        yield api


def test_a_runpod_pod_fetches_its_bundle_and_sends_its_output_through_the_bucket(s3_stack, s3, s3_user, runpod,
                                                                                tiny_model_dir, tmp_path: Path):
    config = cloud_job_config(s3_user, tmp_path, "rp-s3", tiny_model_dir, max_steps=8)
    r = s3_user.post("/api/training/deploy/runpod", json={"config": config, "gpu_type": "NVIDIA RTX A4000",
                                                          "gpu_count": 1, "preflight": False})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = wait_for_status(s3_user, job_id, {"completed"}, timeout=400)
    steps = s3_user.get(f"/api/training/metrics/{job_id}", params={"limit": 100}).json()["metrics"]
    assert [m["step"] for m in steps] == list(range(1, 9))
    wait_until(lambda: s3_user.get(f"/api/training/jobs/{job_id}").json()["model_id"], what="registration")
    model = next(m for m in s3_user.get("/api/models").json() if m["job_id"] == job_id)
    assert Path(model["adapter_path"], "adapter_config.json").exists()  # brought from the bucket by the provider

    pod = next(p for p in [*runpod.pods.values(), *runpod.ended.values()] if job_id in p.name)
    public = urlsplit(public_endpoint(s3))
    for name in ("TUNEFLEET_BUNDLE_URL", "TUNEFLEET_ARTIFACTS_URL"):
        url = urlsplit(pod.env[name])
        assert (url.netloc, url.path.split("/")[1]) == (public.netloc, s3_stack.bucket), pod.env[name]
    assert pod.env["TUNEFLEET_HEARTBEAT_URL"].startswith(s3_stack.url)  # small reports still go to the gateway
    assert not any(SECRET_KEY in v for v in pod.env.values())  # the URL is the permission, not a credential
    stored = objects(s3, s3_stack.bucket)
    assert f"team-a/bundles/{job_id}/attempt-1.tar.gz" in stored
    assert f"team-a/artifacts/{job_id}/attempt-1/output.tar.gz" in stored
    access = (s3_stack.home / "logs" / "gateway.log").read_text(errors="replace")
    assert f"/api/bundles/{job_id}/1/heartbeat" in access
    assert not re.search(rf"(GET|PUT) /api/bundles/{job_id}/1/(bundle.tar.gz|artifacts)", access)
    assert job["cost_usd"] > 0


def test_a_lambda_instance_trains_on_a_stack_whose_files_are_in_the_bucket(s3_stack, s3, s3_user, lambda_cloud,
                                                                          tiny_model_dir, tmp_path: Path):
    config = cloud_job_config(s3_user, tmp_path, "lc-s3", tiny_model_dir, max_steps=6)
    r = s3_user.post("/api/training/deploy/lambda", json={"config": config, "instance_type": "gpu_1x_a10",
                                                          "preflight": False})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    wait_for_status(s3_user, job_id, {"completed"}, timeout=600)
    steps = s3_user.get(f"/api/training/metrics/{job_id}", params={"limit": 100}).json()["metrics"]
    assert [m["step"] for m in steps] == list(range(1, 7))
    wait_until(lambda: s3_user.get(f"/api/training/jobs/{job_id}").json()["model_id"], what="registration")
    model = next(m for m in s3_user.get("/api/models").json() if m["job_id"] == job_id)
    assert Path(model["adapter_path"], "adapter_config.json").exists()
    # fetched over SSH by the provider, then kept in the bucket for the services of other machines
    assert f"team-a/artifacts/{job_id}/attempt-1/output.tar.gz" in objects(s3, s3_stack.bucket)


def test_a_runpod_pod_lost_mid_run_resumes_from_its_checkpoint_in_the_bucket(s3_stack, s3, s3_user, runpod,
                                                                             tiny_model_dir, tmp_path: Path):
    from services.sandbox.images import TRAINER_IMAGE

    config = cloud_job_config(s3_user, tmp_path, "rp-s3-resume", tiny_model_dir, max_steps=24)
    config["training"] |= {"save_steps": 4, "eval_steps": 24}
    r = s3_user.post("/api/training/deploy/runpod", json={"config": config, "gpu_type": "NVIDIA RTX A4000",
                                                          "gpu_count": 1, "preflight": False,
                                                          "docker_image": TRAINER_IMAGE})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    prefix = f"team-a/checkpoints/{job_id}/"
    wait_until(lambda: any(k.startswith(prefix) for k in objects(s3, s3_stack.bucket)), 240, "a checkpoint object")
    first = next(p for p in runpod.pods.values() if job_id in p.name)
    runpod.kill_workload(first.id)
    job = wait_for_status(s3_user, job_id, {"completed"}, timeout=400)
    assert job["attempt"] == 2
    second = next(p for p in [*runpod.pods.values(), *runpod.ended.values()] if job_id in p.name and p.id != first.id)
    log = runpod.log_path(second.id, "volume/tunefleet-job/output/train.log").read_text(errors="replace")
    resumed = int(re.search(r"resuming from \S*checkpoint-(\d+)", log).group(1))
    first_step = int(re.search(r"\[trainer\] train step=(\d+)/", log).group(1))
    assert resumed >= 4 and first_step == resumed + 1
    steps = s3_user.get(f"/api/training/metrics/{job_id}", params={"limit": 1000}).json()["metrics"]
    assert [m["step"] for m in steps] == list(range(1, 25))
    # only the newest checkpoint is kept; the second pod was sent to the bucket for it, not served by the gateway
    assert len([k for k in objects(s3, s3_stack.bucket) if k.startswith(prefix)]) == 1
    access = (s3_stack.home / "logs" / "gateway.log").read_text(errors="replace")
    assert re.search(rf'"GET /api/bundles/{job_id}/2/checkpoint.tar.gz\S* HTTP/[\d.]+" 307', access), \
        [line for line in access.splitlines() if job_id in line and "checkpoint" in line][-5:]

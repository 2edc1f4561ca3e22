"""The stack as processes with its files in an S3 bucket (``rclone serve s3`` on loopback, which checks every
signature): a data set uploaded through the gateway is an object of the bucket and nowhere on the server's disk,
its preview is a ranged read, the preflight and a local job train on it, and deleting it deletes the object."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.objectstore import ACCESS_KEY, SECRET_KEY, S3Server

from .conftest import RunningStack, wait_for_status

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory, s3, tiny_model_dir):
    bucket = s3.new_bucket()
    stack = RunningStack(tmp_path_factory.mktemp("s3-stack") / "home", {
        "TUNEFLEET_STORAGE_BACKEND": "s3", "TUNEFLEET_S3_BUCKET": bucket, "TUNEFLEET_S3_ENDPOINT_URL": s3.endpoint,
        "TUNEFLEET_S3_PREFIX": "team-a", "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "TUNEFLEET_MODEL_DIRS": str(tmp_path_factory.getbasetemp())})
    stack.start()
    stack.bucket = bucket
    yield stack
    stack.stop()


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

        assert api.delete(f"/api/training/datasets/{dataset['id']}").status_code == 204
        assert objects(s3, s3_stack.bucket) == []
        assert api.get(f"/api/training/datasets/{dataset['id']}/preview").status_code == 404

"""Lambda Cloud end to end through HTTP, against an emulator at least as strict as Lambda: instances of Lambda
Stack's image (python3 3.10, no TuneFleet) behind real SSH on their own loopback addresses, sshd late after
``active``, Lambda's rate limits enforced; the bootstrap fetches a Python 3.11, installs the trainer and trains."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from pathlib import Path

import pytest

from services.cloud.checkpoints import latest_checkpoint
from services.provider_lambda.api_client import LambdaClient, NotFoundAtLambda
from shared.providers import installation_id, resource_name
from shared.settings import Settings

from .conftest import LAMBDA_KEY, PROVISIONING_TIMEOUT_S, wait_for_status, wait_until
from .test_runpod import stream_texts

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


def instances_of(lambda_cloud, job_id, *, live_only=True):
    """The job's instances: live ones, or every one ever launched."""
    instances = lambda_cloud.instances if live_only else lambda_cloud.launched
    return [i for i in list(instances.values())
            if job_id in i.name and (not live_only or i.status in ("booting", "active"))]


def job_log(lambda_cloud, instance) -> str:
    return lambda_cloud.log_path(instance.id, "tunefleet-job/output/train.log").read_text(errors="replace")


def test_a_job_on_lambda_stack_fetches_python_installs_the_trainer_and_comes_back(stack, alice, lambda_cloud,
                                                                                   config):
    lambda_cloud.faults.ssh_refused_s = 4.0  # sshd answers 6 s after "active"
    try:
        job_id = deploy(alice, config)
        wait_until(lambda: instances_of(lambda_cloud, job_id), 60, "an instance")
    finally:
        lambda_cloud.faults.ssh_refused_s = 0.0
    instance = instances_of(lambda_cloud, job_id)[0]
    spec = instance.home / "tunefleet-job" / "spec.json"
    wait_until(spec.exists, 60, "the bundle to be uploaded")
    assert spec.stat().st_mode & 0o777 == 0o600  # uploaded by SFTP, readable by its owner only
    job = wait_for_status(alice, job_id, {"completed"}, timeout=600)
    assert job["cost_usd"] > 0 and job["resource_id"] == instance.id and job["attempt"] == 1
    log = job_log(lambda_cloud, instance)
    assert "this image's python is 3.10" in log and "fetching CPython" in log  # Lambda Stack's python3
    assert "installing the trainer" in log and "[trainer] completed" in log
    assert "[trainer]" in job["logs_tail"]  # the log tail travelled back over SSH
    metrics = alice.get(f"/api/training/metrics/{job_id}", params={"limit": 100}).json()
    assert [m["step"] for m in metrics["metrics"]] == list(range(1, 9))
    assert alice.get(f"/api/training/predictions/{job_id}").json()["predictions"]
    wait_until(lambda: alice.get(f"/api/training/jobs/{job_id}").json()["model_id"], what="registration")
    model = next(m for m in alice.get("/api/models").json() if m["job_id"] == job_id)
    assert Path(model["adapter_path"], "adapter_config.json").exists()  # fetched by SFTP
    wait_until(lambda: not instances_of(lambda_cloud, job_id), what="the instance to be terminated")
    assert not lambda_cloud.running_processes(instance)
    wait_until(lambda: not any(job_id in k["name"] for k in lambda_cloud.ssh_keys.values()), 60,
               "its SSH key to be removed")


def test_three_launches_at_once_all_complete_under_the_rate_limits(stack, alice, lambda_cloud, config):
    """One launch answer is lost on the way too: each job still ends up with exactly one instance."""
    lambda_cloud.faults.lost_launch_answers = 1
    short = {**config, "training": {**config["training"], "max_steps": 2, "eval_steps": 2}}
    jobs, threads = [], []
    for _ in range(3):  # two gaps between launches show the limit; each more launch is one more install here
        thread = threading.Thread(target=lambda: jobs.append(deploy(alice, short)))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    for job_id in jobs:
        wait_for_status(alice, job_id, {"completed"}, timeout=900)
    assert lambda_cloud.faults.lost_launch_answers == 0
    for job_id in jobs:
        assert len(instances_of(lambda_cloud, job_id, live_only=False)) == 1, job_id
    launches = [i.created for i in lambda_cloud.launched.values() if any(j in i.name for j in jobs)]
    gaps = [b - a for a, b in zip(sorted(launches), sorted(launches)[1:], strict=False)]
    assert all(gap >= 11.9 for gap in gaps), gaps  # Lambda's launch limit held
    assert not [r for r in lambda_cloud.rejected if "launch" in r]


def test_an_instance_lost_mid_run_resumes_from_its_uploaded_checkpoint(stack, alice, lambda_cloud, config):
    resumable = {**config, "training": {**config["training"], "max_steps": 24, "save_steps": 4, "eval_steps": 24}}
    job_id = deploy(alice, resumable)
    settings = Settings(home=stack.home)
    wait_until(lambda: asyncio.run(latest_checkpoint(settings, job_id)) is not None, 600, "an uploaded checkpoint")
    first = instances_of(lambda_cloud, job_id)[0]
    lambda_cloud.kill_workload(first.id)
    job = wait_for_status(alice, job_id, {"completed"}, timeout=900)
    assert job["attempt"] == 2 and "preempted" in [h["status"] for h in job["history"]]
    second = next(i for i in instances_of(lambda_cloud, job_id, live_only=False) if i.id != first.id)
    log = job_log(lambda_cloud, second)
    resumed = int(re.search(r"resuming from \S*checkpoint-(\d+)", log).group(1))
    first_step = int(re.search(r"\[trainer\] train step=(\d+)/", log).group(1))
    assert resumed >= 4 and first_step == resumed + 1
    metrics = alice.get(f"/api/training/metrics/{job_id}", params={"limit": 1000}).json()["metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 25))
    assert not lambda_cloud.running_processes(first)


def test_an_instance_stuck_booting_is_terminated_and_the_job_fails_after_retries(stack, alice, lambda_cloud,
                                                                                  config):
    lambda_cloud.faults.stuck_booting = True
    try:
        job = wait_for_status(alice, deploy(alice, config), {"failed"}, timeout=6 * PROVISIONING_TIMEOUT_S)
    finally:
        lambda_cloud.faults.stuck_booting = False
    statuses = [h["status"] for h in job["history"]]
    assert statuses.count("preempted") == 3 and statuses[-1] == "failed"
    assert "stuck provisioning" in job["status_reason"]
    wait_until(lambda: not instances_of(lambda_cloud, job["job_id"]), what="the stuck instances to go")


def test_an_instance_whose_ssh_never_answers_is_replaced_then_the_job_fails(stack, alice, lambda_cloud, config):
    """Lambda says "active" but sshd never lets us in: the instance is billed, so it must not wait forever."""
    lambda_cloud.faults.ssh_refused_s = 3600.0
    try:
        job_id = deploy(alice, config)
        job = wait_for_status(alice, job_id, {"failed"}, timeout=6 * PROVISIONING_TIMEOUT_S)
    finally:
        lambda_cloud.faults.ssh_refused_s = 0.0
    statuses = [h["status"] for h in job["history"]]
    assert statuses.count("preempted") == 3 and statuses[-1] == "failed"
    assert "stuck provisioning" in job["status_reason"] and "not reachable yet" in job["status_reason"]
    launched = instances_of(lambda_cloud, job_id, live_only=False)
    assert len(launched) == 3 and all(i.active_at is not None for i in launched)  # one per attempt, each "active"
    wait_until(lambda: not instances_of(lambda_cloud, job_id), what="the unreachable instances to go")


def test_no_capacity_fails_the_job_with_a_clear_reason(stack, alice, lambda_cloud, config):
    lambda_cloud.faults.no_capacity = True
    try:
        job = wait_for_status(alice, deploy(alice, config), {"failed"}, timeout=60)
    finally:
        lambda_cloud.faults.no_capacity = False
    assert "no gpu_1x_a10 capacity" in job["status_reason"]


def test_orphan_instances_are_terminated_by_reconciliation(stack, alice, lambda_cloud, config):
    """An instance of this installation that no job owns is terminated; one of another installation on the same
    account (its own name prefix) is left alone. Both are made behind TuneFleet's back, in the emulator."""
    ours = installation_id((stack.home / "secret_key").read_text().strip())
    orphan, theirs = (lambda_cloud.create_instance(resource_name(installation, str(uuid.uuid4()), 1), INSTANCE,
                                                   "us-east-1", []).id
                      for installation in (ours, "0ther1n5"))

    def terminated(instance_id: str) -> bool:
        instance = lambda_cloud.instances.get(instance_id)
        return instance is None or instance.status in ("terminating", "terminated")

    wait_until(lambda: terminated(orphan), 90, "the orphan instance to be terminated")
    time.sleep(3.0)  # several reconcile rounds later
    assert lambda_cloud.instances[theirs].status == "active"
    lambda_cloud.kill_workload(theirs)


def test_the_lambda_key_appears_in_no_log_event_or_generated_text(stack, lambda_cloud):
    for path in list(stack.home.rglob("*")) + list(lambda_cloud.workdir.rglob("*")):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert LAMBDA_KEY.encode() not in path.read_bytes(), path
    assert LAMBDA_KEY not in stream_texts(stack)


def test_lambda_answers_are_rate_limited_like_lambda(lambda_cloud, monkeypatch):
    """The emulator holds clients to Lambda's rates: a burst from a client without a limiter is refused."""
    import httpx

    rejected = 0
    with httpx.Client(base_url=lambda_cloud.url, headers={"Authorization": f"Bearer {LAMBDA_KEY}"}) as raw:
        for _ in range(3):
            r = raw.get("/instance-types")
            rejected += r.status_code == 429
            if r.status_code == 429:
                assert r.text == "error code: 1015" and "retry-after" not in r.headers
    assert rejected >= 1
    time.sleep(1.1)


def test_terminating_a_vanished_instance_is_not_an_error(lambda_cloud, monkeypatch):
    """Lambda answers 404 global/object-does-not-exist; for terminate that means the work is done. (Through the
    client, which keeps to Lambda's rate: the provider polls the same account meanwhile.)"""
    monkeypatch.setenv("LAMBDA_API_BASE_URL", lambda_cloud.url)
    client = LambdaClient(LAMBDA_KEY)
    with pytest.raises(NotFoundAtLambda, match="does not exist"):
        asyncio.run(client._call("POST", "/instance-operations/terminate", {"instance_ids": ["0" * 32]}))
    asyncio.run(client.terminate("0" * 32))

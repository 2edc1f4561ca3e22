"""RunPod end to end through HTTP, against an emulator at least as strict as RunPod: the real start command runs
the real bootstrap on a stock image (Python and torch, no TuneFleet), which installs the trainer from the bundle;
crashes loop as RunPod restarts containers; checkpoints survive a lost pod; nothing is left running."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path

import nats
import pytest

from services.cloud.checkpoints import latest_checkpoint
from services.sandbox.images import TRAINER_IMAGE
from shared import subjects
from shared.providers import installation_id, resource_name
from shared.settings import Settings

from .conftest import PROVISIONING_TIMEOUT_S, RUNPOD_KEY, cloud_job_config, wait_for_status, wait_until

pytestmark = pytest.mark.e2e

SECRET_ENV_VALUE = "hf_secret-env-value-31415926"

GPU = "NVIDIA RTX A4000"


@pytest.fixture(scope="module")
def config(alice, tiny_model_dir, tmp_path_factory) -> dict:
    assert alice.put("/api/secrets/runpod", json={"api_key": RUNPOD_KEY}).status_code == 204
    return cloud_job_config(alice, tmp_path_factory.mktemp("rp"), "rp", tiny_model_dir, max_steps=8)


def deploy(client, config, **extra) -> str:
    body = {"config": config, "gpu_type": GPU, "gpu_count": 1, "preflight": False, **extra}
    r = client.post("/api/training/deploy/runpod", json=body)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def pods_of(runpod, job_id):
    """The pods of a job that RunPod lists (terminated ones leave the list)."""
    return [p for p in list(runpod.pods.values()) if job_id in p.name]


def all_pods_of(runpod, job_id):
    return [p for p in [*runpod.pods.values(), *runpod.ended.values()] if job_id in p.name]


def trainer_log(runpod, pod) -> str:
    return runpod.log_path(pod.id, "volume/tunefleet-job/output/train.log").read_text(errors="replace")


def stream_texts(stack) -> str:
    async def read() -> str:
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        texts = []
        for stream in (subjects.COMMANDS_STREAM, subjects.EVENTS_STREAM, subjects.DEAD_LETTERS_STREAM):
            info = await js.stream_info(stream)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    texts.append((await js.get_msg(stream, seq)).data.decode())
                except Exception:  # a message removed by the stream's limits
                    continue
        await nc.close()
        return "\n".join(texts)

    return asyncio.run(read())


def test_a_job_on_the_stock_image_installs_the_trainer_trains_and_comes_back(stack, alice, runpod, config):
    job_id = deploy(alice, config, environment_variables={"HF_HUB_OFFLINE": "1", "NOTE": 'quotes " and \\ pass'},
                    secret_environment_variables={"HF_TOKEN": SECRET_ENV_VALUE})
    job = wait_for_status(alice, job_id, {"completed"}, timeout=400)
    assert "running" in [h["status"] for h in job["history"]] and job["attempt"] == 1
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
    pod = all_pods_of(runpod, job_id)[0]
    assert not runpod.running_processes(pod.id)
    # The stock image had no trainer: the bootstrap installed the wheel from the bundle into a venv on the volume.
    log = trainer_log(runpod, pod)
    assert "installing the trainer" in log and "[trainer] completed" in log
    assert re.search(r"installing the trainer \w+ and its requirements into \S+/volume/tunefleet-venv", log)
    # What the pod was asked for: no public IP, a minimum CUDA, its disk and volume, and a fixed start command
    # in RunPod's JSON form (the image's ENTRYPOINT does not wrap it); the job's data only as env values.
    query = next(q for q in runpod.requests if "podFindAndDeployOnDemand" in q and job_id in q)
    assert "supportPublicIp: false" in query and 'minCudaVersion: "12.8"' in query
    assert 'volumeMountPath: "/workspace"' in query and "containerDiskInGb: 30" in query
    assert json.loads(pod.docker_args)["entrypoint"] == ["bash", "-c"]
    assert pod.env["NOTE"] == 'quotes " and \\ pass' and pod.env["HF_HOME"] == "/workspace/huggingface"
    assert pod.env["HF_TOKEN"] == SECRET_ENV_VALUE  # opened by the provider only, for the pod
    assert pod.image == Settings.model_fields["runpod_default_image"].default
    assert config["model"]["base_model"] not in query  # the configuration travels in the bundle


def test_an_image_with_this_trainer_skips_the_install_and_api_errors_are_retried(stack, alice, runpod, config):
    runpod.faults.rate_limited, runpod.faults.http_errors = 3, 2
    job_id = deploy(alice, config, docker_image=TRAINER_IMAGE)
    wait_for_status(alice, job_id, {"completed"}, timeout=300)
    assert runpod.faults.rate_limited == 0 and runpod.faults.http_errors == 0
    log = trainer_log(runpod, all_pods_of(runpod, job_id)[0])
    assert "the image already has this trainer" in log and "installing the trainer" not in log


def test_a_lost_create_answer_leaves_exactly_one_pod(stack, alice, runpod, config):
    runpod.faults.lost_create_answers = 1
    job_id = deploy(alice, config, docker_image=TRAINER_IMAGE)
    job = wait_for_status(alice, job_id, {"completed"}, timeout=300)
    assert runpod.faults.lost_create_answers == 0
    assert len(all_pods_of(runpod, job_id)) == 1 and job["attempt"] == 1


def test_a_crashing_container_fails_the_job_with_its_log_after_a_few_restarts(stack, alice, runpod, config):
    runpod.faults.crash_after_s = 4.0
    try:
        job_id = deploy(alice, config)
        job = wait_for_status(alice, job_id, {"failed"}, timeout=180)
    finally:
        runpod.faults.crash_after_s = None
    pod = all_pods_of(runpod, job_id)[0]
    assert len(all_pods_of(runpod, job_id)) == 1 and pod.starts >= 3  # RunPod restarted it; it stayed RUNNING
    assert "restarted 3 times" in job["status_reason"] and "[bootstrap]" in job["status_reason"]
    wait_until(lambda: not pods_of(runpod, job_id), what="the pod to be terminated")
    assert not runpod.running_processes(pod.id)


def test_an_unknown_image_never_starts_and_the_job_fails_after_retries(stack, alice, runpod, config):
    job_id = deploy(alice, config, docker_image="ghcr.io/example/no-such-image:1")
    job = wait_for_status(alice, job_id, {"failed"}, timeout=5 * PROVISIONING_TIMEOUT_S)
    statuses = [h["status"] for h in job["history"]]
    assert statuses.count("preempted") == 3 and statuses[-1] == "failed"
    assert "stuck provisioning" in job["status_reason"]
    wait_until(lambda: not pods_of(runpod, job_id), what="the stuck pods to be terminated")


def test_a_slow_pull_and_a_runtime_gone_mid_run_are_not_stuck_provisioning(stack, alice, runpod, config):
    """Timers count from the last entry into provisioning: a pull of 0.6 of the limit passes, and so does a
    runtime that goes null for half the limit after the pod has lived longer than the limit."""
    runpod.faults.slow_pull_s = 0.6 * PROVISIONING_TIMEOUT_S
    try:
        long = {**config, "training": {**config["training"], "max_steps": 100_000, "eval_steps": 100_000}}
        job_id = deploy(alice, long, docker_image=TRAINER_IMAGE)
        wait_for_status(alice, job_id, {"running"}, timeout=120)
    finally:
        runpod.faults.slow_pull_s = 0.0
    pod = pods_of(runpod, job_id)[0]
    wait_until(lambda: time.time() - pod.created > PROVISIONING_TIMEOUT_S + 2, 60, "the pod to outlive the limit")
    runpod.hide_runtime(pod.id, PROVISIONING_TIMEOUT_S / 2)
    time.sleep(PROVISIONING_TIMEOUT_S / 2 + 3)
    job = alice.get(f"/api/training/jobs/{job_id}").json()
    assert job["status"] == "running" and job["attempt"] == 1, job
    assert "preempted" not in [h["status"] for h in job["history"]]
    assert pods_of(runpod, job_id) == [pod]
    alice.post(f"/api/training/jobs/{job_id}/stop")
    wait_for_status(alice, job_id, {"stopped"}, timeout=60)


def test_a_pod_lost_mid_run_resumes_from_its_uploaded_checkpoint(stack, alice, runpod, config):
    resumable = {**config, "training": {**config["training"], "max_steps": 24, "save_steps": 4, "eval_steps": 24}}
    job_id = deploy(alice, resumable, docker_image=TRAINER_IMAGE)
    settings = Settings(home=stack.home)
    wait_until(lambda: asyncio.run(latest_checkpoint(settings, job_id)) is not None, 240, "an uploaded checkpoint")
    first = pods_of(runpod, job_id)[0]
    runpod.kill_workload(first.id)
    job = wait_for_status(alice, job_id, {"completed"}, timeout=400)
    assert job["attempt"] == 2
    statuses = [h["status"] for h in job["history"]]
    assert statuses[statuses.index("preempted") - 1:statuses.index("preempted") + 2] == \
        ["running", "preempted", "queued"]
    second = next(p for p in all_pods_of(runpod, job_id) if p.id != first.id)
    log = trainer_log(runpod, second)
    resumed = int(re.search(r"resuming from \S*checkpoint-(\d+)", log).group(1))
    first_step = int(re.search(r"\[trainer\] train step=(\d+)/", log).group(1))
    assert resumed >= 4 and first_step == resumed + 1  # training carried on from the checkpoint
    metrics = alice.get(f"/api/training/metrics/{job_id}", params={"limit": 1000}).json()["metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 25))  # each step exactly once, no gap
    wait_until(lambda: not pods_of(runpod, job_id), what="the pod to be terminated")


def test_a_refused_key_fails_the_job_with_the_fix(stack, alice, runpod, config):
    assert alice.put("/api/secrets/runpod", json={"api_key": "rp-wrong-key-00000"}).status_code == 204
    try:
        job_id = deploy(alice, config)
        job = wait_for_status(alice, job_id, {"failed"}, timeout=60)
    finally:
        alice.put("/api/secrets/runpod", json={"api_key": RUNPOD_KEY})
    assert "PUT /api/secrets/runpod" in job["status_reason"]


def test_bad_deploy_options_get_a_422_naming_the_field(stack, alice, config):
    r = alice.post("/api/training/deploy/runpod", json={"config": config, "gpu_type": GPU, "preflight": False,
                                                         "environment_variables": {"NOTE": "two\nlines"}})
    assert r.status_code == 422 and "NOTE" in r.text and "environment_variables" in r.text
    r = alice.post("/api/training/deploy/runpod", json={"config": config, "gpu_type": GPU, "preflight": False,
                                                         "environment_variables": {"HF_TOKEN": "a"},
                                                         "secret_environment_variables": {"HF_TOKEN": "b"}})
    assert r.status_code == 422 and "HF_TOKEN is in both" in r.text
    big = {**config, "model": {**config["model"], "base_model": "meta-llama/Meta-Llama-3-70B"}}
    r = alice.post("/api/training/deploy/runpod", json={"config": big, "gpu_type": GPU, "preflight": False,
                                                         "volume_size_gb": 40})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "volume_size_gb"


def test_orphan_pods_are_terminated_by_reconciliation(stack, alice, runpod, config):
    """A pod of this installation that no job owns is terminated; another installation's is left alone."""
    ours = installation_id((stack.home / "secret_key").read_text().strip())
    orphan, theirs = (runpod._create({"name": resource_name(installation, str(uuid.uuid4()), 1), "imageName": "x",
                                      "gpuTypeId": GPU, "dockerArgs": "sleep 600"})
                      for installation in (ours, "0ther1n5"))
    wait_until(lambda: orphan.id not in runpod.pods, 60, "the orphan pod to be terminated")
    time.sleep(3.0)  # several reconcile rounds later
    assert theirs.id in runpod.pods
    runpod.kill_workload(theirs.id)


def test_the_key_appears_in_no_log_event_or_generated_text(stack, runpod):
    for path in list(stack.home.rglob("*")) + list(runpod.workdir.rglob("*")):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert RUNPOD_KEY.encode() not in path.read_bytes(), path
    assert not any(RUNPOD_KEY in q for q in runpod.requests)
    assert RUNPOD_KEY not in stream_texts(stack)
    # A secret environment value was sealed at the gateway: no row, stream or log of the stack holds it.
    for path in stack.home.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET_ENV_VALUE.encode() not in path.read_bytes(), path
    assert SECRET_ENV_VALUE not in stream_texts(stack)
    # The pods' signed URLs (bundle, heartbeats, artifacts, checkpoints) reached the gateway's access log
    # without their signatures.
    access = (stack.home / "logs" / "gateway.log").read_text(errors="replace")
    assert "/api/bundles/" in access and "sig=[redacted]" in access
    assert not re.search(r"sig=(?!\[redacted\])", access)

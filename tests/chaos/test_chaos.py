"""Chaos: every part of the stack is SIGKILLed mid-job, several times, while jobs run; ``tunefleet up``'s supervisor
starts each again. Afterwards every accepted job has completed with its model registered, the metric rows are
exactly the steps each trainer logged (none lost, none twice), nothing was dead-lettered and no trainer is left
running. One table says what each part's kills cost."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from shared.supervision import read_status
from tests.stack import TERMINAL, RunningStack

pytestmark = pytest.mark.chaos

COMPONENTS = ("gateway", "scheduler", "provider_local", "metrics_ingest", "model_registry", "nats", "postgres")
KILLS_EACH = 2
STEPS = 24
IN_FLIGHT = 2
TRAINER_LINE = re.compile(r"^\[trainer\] (train|eval) step=(\d+)")


@dataclass
class Part:
    name: str
    kills: int = 0
    jobs: set[str] = field(default_factory=set)


class Client:
    """HTTP to a gateway that may be dead for a moment: requests that were never sent, or answered 503, are sent
    again; a deploy whose answer was lost is found afterwards in the job list."""

    def __init__(self, url: str, key: str):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def call(self, method: str, path: str, *, retry_sent: bool, **kw) -> httpx.Response | None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                r = self.http.request(method, path, **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                time.sleep(0.3)
                continue
            except httpx.TransportError:
                if not retry_sent:
                    return None  # it may have been accepted: the job list will tell
                time.sleep(0.3)
                continue
            if r.status_code == 503:
                time.sleep(0.5)
                continue
            return r
        raise AssertionError(f"{method} {path}: no answer for 120 s")

    def get(self, path: str, **kw) -> dict | list:
        r = self.call("GET", path, retry_sent=True, **kw)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory, tiny_model_dir):
    stack = RunningStack(tmp_path_factory.mktemp("chaos") / "home", {
        "TUNEFLEET_MODEL_DIRS": str(tmp_path_factory.getbasetemp()),
        "TUNEFLEET_MAX_LOCAL_JOBS_PER_USER": "50", "TUNEFLEET_LOCAL_POLL_INTERVAL_S": "0.5"})
    stack.start()
    yield stack
    if stack.process and stack.process.poll() is None:
        stack.stop()


def supervised(stack: RunningStack) -> dict:
    return read_status(stack.home).get("services", {})


def kill(stack: RunningStack, name: str) -> None:
    before = supervised(stack)[name]
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = supervised(stack).get(name, {})
        assert not now.get("gave_up"), f"the supervisor gave up on {name}"
        if now.get("restarts", 0) > before["restarts"]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"{name} was not restarted within 90 s")
    stack.wait_ready(max(deadline - time.monotonic(), 1.0))  # back and ready: the next kill hits a working stack


def logged_steps(stack: RunningStack, job_id: str) -> tuple[list[int], list[int]]:
    """The train and eval steps the trainer says it logged, from its own log, over every attempt."""
    train, evals = [], []
    for log in sorted((stack.home / "artifacts" / job_id).glob("attempt-*/train.log")):
        for line in log.read_text(errors="replace").splitlines():
            if match := TRAINER_LINE.match(line):
                (train if match.group(1) == "train" else evals).append(int(match.group(2)))
    return train, evals


def trainers_running(stack: RunningStack) -> list[str]:
    """The trainers of this stack that still run, by their command line (it names the job's bundle)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "-m trainer" in cmdline and str(stack.home) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(cmdline)
    return found


def test_killing_every_part_mid_job_loses_nothing_and_leaves_nothing_running(chaos_stack: RunningStack,
                                                                              tiny_model_dir, tmp_path: Path, capsys):
    from trainer.tiny_model import write_sample_dataset

    stack = chaos_stack
    client = Client(stack.url, stack.cli("keys", "create", "--user", "chaos").strip())
    data = tmp_path / "data.jsonl"
    write_sample_dataset(str(data), rows=48, fmt="instruction")
    dataset = client.call("POST", "/api/training/datasets", retry_sent=True,
                          files={"file": ("data.jsonl", data.read_bytes())}).json()
    config = {"name": "chaos", "model": {"base_model": str(tiny_model_dir), "max_seq_length": 64},
              "data": {"dataset_id": dataset["id"], "eval_split": 0.2},
              "training": {"max_steps": STEPS, "batch_size": 4, "logging_steps": 1, "eval_steps": 12,
                           "save_steps": 12},
              "predictions": {"sample_count": 1, "frequency": "eval", "max_new_tokens": 4, "temperature": 0}}
    accepted: list[str] = []
    stop_feeding = threading.Event()

    def live() -> list[str]:
        jobs = client.get("/api/training/jobs", params={"limit": 500})
        return [j["job_id"] for j in jobs if j["status"] not in TERMINAL]

    def feed() -> None:  # keeps IN_FLIGHT jobs going until the kills are over
        while not stop_feeding.is_set():
            if len(live()) < IN_FLIGHT:
                r = client.call("POST", "/api/training/deploy/local", retry_sent=False, json={"config": config})
                if r is not None:
                    assert r.status_code == 202, r.text
                    accepted.append(r.json()["job_id"])
            time.sleep(1.0)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    parts = {name: Part(name) for name in COMPONENTS}
    started = time.monotonic()
    for _ in range(KILLS_EACH):
        for name in COMPONENTS:
            deadline = time.monotonic() + 60
            while not (running := [j["job_id"] for j in client.get("/api/training/jobs", params={"limit": 500})
                                   if j["status"] == "running"]):
                assert time.monotonic() < deadline, "no job got to running within 60 s"
                time.sleep(0.3)
            time.sleep(1.0)  # mid-job: metrics are flowing
            parts[name].jobs.update(running)
            kill(stack, name)
            parts[name].kills += 1
    stop_feeding.set()
    feeder.join(150)
    kills_s = time.monotonic() - started

    # Every job the gateway accepted, including one whose answer a dying gateway never sent, ends.
    deadline = time.monotonic() + 400
    while (left := live()) and time.monotonic() < deadline:
        time.sleep(1.0)
    jobs = {j["job_id"]: j for j in client.get("/api/training/jobs", params={"limit": 500})}
    assert set(accepted) <= set(jobs)
    models = {m["job_id"] for m in client.get("/api/models")}
    deadline = time.monotonic() + 60
    while not {j for j, job in jobs.items() if job["status"] == "completed"} <= models and time.monotonic() < deadline:
        time.sleep(1.0)
        models = {m["job_id"] for m in client.get("/api/models")}

    lost_jobs, point_faults, summary = set(), {}, {}
    for job_id, job in jobs.items():
        if job["status"] != "completed" or job_id not in models:
            lost_jobs.add(job_id)
        train, evals = logged_steps(stack, job_id)
        rows = client.get(f"/api/training/metrics/{job_id}", params={"limit": 10000})["metrics"]
        stored_train = sorted(r["step"] for r in rows if "loss" in r)
        stored_eval = sorted(r["step"] for r in rows if "eval_loss" in r)
        faults = (len(set(train) ^ set(stored_train)) + len(set(evals) ^ set(stored_eval))  # lost or invented
                  + len(stored_train) - len(set(stored_train)) + len(stored_eval) - len(set(stored_eval)))
        point_faults[job_id] = faults
        summary[job_id] = (job["status"], len(train), len(stored_train), job_id in models)
    deadline = time.monotonic() + 60  # a trainer that reported its end may take a moment to exit
    while (orphans := trainers_running(stack)) and time.monotonic() < deadline:
        time.sleep(0.5)
    health = httpx.get(f"{stack.url}/healthz", timeout=10).json()

    with capsys.disabled():  # the table shows in every run, CI's included, not only when the test fails
        print(f"\nchaos: {sum(p.kills for p in parts.values())} kills in {kills_s:.0f} s, {len(jobs)} jobs "
              f"({len(accepted)} answered 202)")
        print(f"{'component':<16}{'kills':>6}{'jobs':>6}{'lost jobs':>11}{'lost/dup points':>17}{'orphans':>9}")
        for part in parts.values():
            print(f"{part.name:<16}{part.kills:>6}{len(part.jobs):>6}{len(part.jobs & lost_jobs):>11}"
                  f"{sum(point_faults.get(j, 0) for j in part.jobs):>17}{len(orphans):>9}")
        for job_id, (status, logged, stored, registered) in summary.items():
            print(f"  job {job_id}: {status}, {logged} train steps logged, {stored} stored, registered={registered}")
    assert not left, f"jobs still not ended: {left}"
    assert not lost_jobs, {j: summary[j] for j in lost_jobs}
    assert all(summary[j][1] == STEPS for j in jobs), summary  # every trainer logged every step
    assert sum(point_faults.values()) == 0, point_faults
    assert orphans == []
    assert health["dead_letters"]["count"] == 0, health["dead_letters"]
    assert all(not s["gave_up"] for s in health["supervisor"].values())
    # Nothing died that was not killed (a CLI call, say, that stopped the stack's PostgreSQL).
    assert {n: health["supervisor"][n]["restarts"] for n in COMPONENTS} == {n: p.kills for n, p in parts.items()}

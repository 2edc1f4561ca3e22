"""Chaos on a clustered NATS: the whole stack (``tunefleet up``) on a three-node JetStream cluster, one node
SIGKILLed while jobs train and another job is deployed during the outage. Every job completes, each metric step is
stored once, no job's history repeats a transition, nothing is dead-lettered, no service dies; the node, started
again, rejoins and catches up. A short account of what happened is printed in every run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from shared import subjects
from shared.bus import STREAM_CONFIGS, connect
from tests.natscluster import NatsCluster, Node
from tests.stack import TERMINAL, RunningStack

pytestmark = pytest.mark.chaos

JOBS = 3
STEPS = 16
HISTORY = ["queued", "provisioning", "running", "completed"]


def settle(predicate, timeout: float):
    """``predicate()`` once it is true, polled every 0.3 s, or its last value after ``timeout`` (for the account
    to be printed before the assertions judge it)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.3)
    return value


def wait_until(predicate, timeout: float, what: str):
    """``predicate()`` once it is true (its value); an assertion error after ``timeout``."""
    value = settle(predicate, timeout)
    assert value, f"timed out after {timeout:.0f} s waiting for {what}"
    return value


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> NatsCluster:
    nodes = NatsCluster(tmp_path_factory.mktemp("natscluster")).start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def clustered_stack(tmp_path_factory, tiny_model_dir, cluster: NatsCluster) -> RunningStack:
    stack = RunningStack(tmp_path_factory.mktemp("nats-chaos") / "home", {
        "TUNEFLEET_MODEL_DIRS": str(tmp_path_factory.getbasetemp()),
        "TUNEFLEET_MAX_LOCAL_JOBS_PER_USER": "50", "TUNEFLEET_LOCAL_POLL_INTERVAL_S": "0.5"})
    stack.env["TUNEFLEET_NATS_URL"] = cluster.url  # after RunningStack, which drops one from the environment
    stack.start()
    yield stack
    if stack.process and stack.process.poll() is None:
        stack.stop()


async def _redelivered(url: str) -> dict[str, int]:
    """Per durable consumer, the messages JetStream delivered more than once (an ack lost with its server, say):
    what the handlers' idempotence had to absorb."""
    nc = await connect(url, "test")
    try:
        found = {}
        for stream in (subjects.COMMANDS_STREAM, subjects.EVENTS_STREAM):
            for info in await nc.jetstream().consumers_info(stream):
                if info.num_redelivered:
                    found[info.name] = info.num_redelivered
        return found
    finally:
        await nc.close()


async def _stream_copies(url: str) -> dict[str, int]:
    nc = await connect(url, "test")
    try:
        found = {}
        for config in STREAM_CONFIGS:
            info = await nc.jetstream().stream_info(config.name)
            found[config.name] = 1 + len(info.cluster.replicas or []) if info.cluster else 1
        return found
    finally:
        await nc.close()


def clients_of(node: Node) -> list[str]:
    """The names of the stack's connections to ``node``."""
    connz = node.monitor("connz", limit="1024") or {}
    return sorted({c.get("name", "").removeprefix("tunefleet-") for c in connz.get("connections") or []} - {""})


def test_losing_one_nats_node_mid_job_loses_nothing(clustered_stack: RunningStack, cluster: NatsCluster,
                                                    tiny_model_dir, tmp_path: Path, capsys):
    from trainer.tiny_model import write_sample_dataset

    stack = clustered_stack
    assert asyncio.run(_stream_copies(cluster.url)) == {c.name: 3 for c in STREAM_CONFIGS}
    key = stack.cli("keys", "create", "--user", "nats-chaos").strip()
    client = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    data = tmp_path / "data.jsonl"
    write_sample_dataset(str(data), rows=32, fmt="instruction")
    dataset = client.post("/api/training/datasets", files={"file": ("data.jsonl", data.read_bytes())}).json()
    config = {"name": "nats-chaos", "model": {"base_model": str(tiny_model_dir), "max_seq_length": 64},
              "data": {"dataset_id": dataset["id"], "eval_split": 0.2},
              "training": {"max_steps": STEPS, "batch_size": 4, "logging_steps": 1, "eval_steps": STEPS // 2},
              "predictions": {"sample_count": 1, "frequency": "eval", "max_new_tokens": 4, "temperature": 0}}

    def deploy() -> httpx.Response:
        return client.post("/api/training/deploy/local", json={"config": config})

    jobs = []
    for _ in range(JOBS):
        r = deploy()
        assert r.status_code == 202, r.text
        jobs.append(r.json()["job_id"])

    def mid_job() -> list[str]:  # jobs that train and have stored some of their steps, not all
        live = []
        for job_id in jobs:
            status = client.get(f"/api/training/jobs/{job_id}").json()["status"]
            assert status not in TERMINAL - {"completed"}, (job_id, status)
            count = client.get(f"/api/training/metrics/{job_id}").json()["total_count"]
            if status == "running" and 0 < count < STEPS:
                live.append(job_id)
        return live

    settle(lambda: len(mid_job()) >= 2, 120)  # more than one job mid-training, where the machine allows
    training = wait_until(mid_job, 300, "a job training with metrics flowing")
    wait_until(lambda: all(cluster.caught_up(n) for n in cluster.nodes), 30, "every stream copy to be current")
    meta_before, leaders_before = cluster.agreed_leader(), cluster.stream_leaders()
    victim = cluster.node(leaders_before.get(subjects.EVENTS_STREAM) or meta_before)
    held = clients_of(victim)
    cluster.kill(victim)
    killed_at = time.monotonic()

    # A deploy while the node is down: the gateway's publish lands on the other two.
    during = deploy()
    if during.status_code == 202:
        jobs.append(during.json()["job_id"])
    meta_after = cluster.wait_formed(60)
    leaders_after = cluster.stream_leaders()

    def jobs_now(every=lambda job: True) -> dict[str, dict] | None:
        found = {j: client.get(f"/api/training/jobs/{j}").json() for j in jobs}
        return found if all(every(job) for job in found.values()) else None

    settle(lambda: jobs_now(lambda job: job["status"] in TERMINAL), 600)
    ended_s = time.monotonic() - killed_at
    final = settle(lambda: jobs_now(lambda job: job["model_id"]), 120) or jobs_now()

    cluster.spawn(victim)
    rejoined = settle(lambda: cluster.agreed_leader() is not None and cluster.caught_up(victim), 120)
    copies = asyncio.run(_stream_copies(cluster.url))
    redelivered = asyncio.run(_redelivered(cluster.url))

    steps = {j: [m["step"] for m in client.get(f"/api/training/metrics/{j}", params={"limit": 10000}).json()["metrics"]]
             for j in jobs}
    histories = {j: [h["status"] for h in job["history"]] for j, job in final.items()}
    dead = stack.cli("dead-letters", "list").strip()
    health = httpx.get(f"{stack.url}/healthz", timeout=10).json()
    restarts = {name: s["restarts"] for name, s in (health.get("supervisor") or {}).items() if s["restarts"]}
    reconnects = {name: (c or {}).get("nats", {}).get("reconnects") for name, c in health["connections"].items()}

    with capsys.disabled():
        print(f"\nnats cluster chaos: killed {victim.name} (events stream leader; it served {', '.join(held) or '-'})"
              f" with {len(training)} job(s) mid-training; a deploy during the outage got {during.status_code}")
        print(f"  meta leader {meta_before} -> {meta_after}; stream leaders {leaders_before} -> {leaders_after}")
        print(f"  jobs ended {ended_s:.0f} s after the kill; {victim.name} rejoined={rejoined}; copies {copies}")
        print(f"  NATS reconnects per service: {reconnects}; service restarts: {restarts or 'none'}")
        print(f"  messages delivered again, per consumer: {redelivered or 'none'}")
        for j in jobs:
            print(f"  job {j}: {final[j]['status']}, {len(steps[j])} steps stored ({len(set(steps[j]))} distinct), "
                  f"history {histories[j]}, model {final[j]['model_id']}")
    assert during.status_code == 202, f"a deploy during the outage: {during.status_code} {during.text}"
    assert all(job["status"] == "completed" for job in final.values()), {j: v["status"] for j, v in final.items()}
    assert all(job["model_id"] for job in final.values()), {j: v["model_id"] for j, v in final.items()}
    assert all(s == list(range(1, STEPS + 1)) for s in steps.values()), steps  # each step once, none lost
    assert all(h == HISTORY for h in histories.values()), histories  # no transition twice
    assert dead == "" and health["dead_letters"]["count"] == 0, (dead, health["dead_letters"])
    assert not restarts, restarts  # losing one node of three is no reason for a service to die
    assert rejoined, f"{victim.name} did not rejoin and catch up: {cluster.log_tail(victim, 1500)}"
    assert copies == {c.name: 3 for c in STREAM_CONFIGS}

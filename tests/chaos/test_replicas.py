"""Replicas: the stack as processes, with two gateways behind a round-robin, two schedulers, two local providers and
three metrics_ingest processes behind a round-robin of their own (the trainers' ingest URL), one of each other
service, one embedded NATS and PostgreSQL. Fifty small local jobs from several users; afterwards every job completed,
each of its status changes was recorded and published once, its metric steps are 1..N stored once, it registered
one model, one trainer ran it, and nothing was dead-lettered. A table gives what was expected beside what was stored,
and what each replica did (from its log and the round-robins' counts).

``tunefleet up`` starts one process per service (``Stack.start_services``: one per name, one gateway and one ingest
port), so the test takes the rest of ``Stack`` (embedded servers, keys, migrations, ``Stack.env``) and starts each
replica itself, with the environment ``Stack.spawn`` gives that service and a port of its own."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from services.cli.embedded import free_port
from services.cli.stack import STOP_ORDER, Stack
from services.gateway.users import create_api_key
from shared import subjects
from shared.settings import Settings
from shared.states import JobStatus, can_transition
from tests.stack import TERMINAL

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1800)]

REPLICAS = {"gateway": 2, "scheduler": 2, "provider_local": 2, "metrics_ingest": 3}
JOBS, STEPS, USERS, IN_FLIGHT = 50, 3, 5, 4
HISTORY = ["queued", "provisioning", "running", "completed"]
CREATED = re.compile(r"job (\S+) attempt \d+: local \S+ created")
BATCH = re.compile(r'"POST /v1/jobs/([0-9a-f-]+)/batches HTTP/[\d.]+" 200')
REQUEST = re.compile(r'"(GET|POST) \S+ HTTP/[\d.]+" \d{3}')
#: A scheduler's report whose change the job no longer allows: here, one the other replica applied first.
IGNORED = re.compile(r"job \S+: (\w+) -> (\w+) not allowed, ignored")


class RoundRobin:
    """A TCP proxy on loopback that hands each new connection to the next upstream in turn, as a Kubernetes Service
    does with its pods; it counts the connections each upstream got."""

    def __init__(self, upstreams: list[int]):
        self.upstreams, self.port = upstreams, free_port()
        self.connections: Counter[int] = Counter()
        self._turn = itertools.cycle(upstreams)
        #: The connections' tasks. The event loop keeps only weak references, and the server's protocol drops its
        #: own once the client side closes, so a task still copying the answer back could be destroyed midway.
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RoundRobin:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Stop listening, end the connections still open, stop the thread."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _close(self) -> None:
        self._server.close()
        open_ = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in open_:
            task.cancel()
        await asyncio.gather(*open_, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self._proxy(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = next(self._turn)
        self.connections[port] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of file, then half-close the other side (its answer may still be on its way back)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


def read_status(client: httpx.Client, job_id: str, resets: list[str]) -> str:
    """The job's status; a poll whose connection broke on the way is asked again (up to twice), and noted."""
    for _ in range(2):
        try:
            return client.get(f"/api/training/jobs/{job_id}").json()["status"]
        except httpx.TransportError as exc:
            resets.append(type(exc).__name__)
    return client.get(f"/api/training/jobs/{job_id}").json()["status"]


@dataclass
class Replicated:
    """The stack's infrastructure (``Stack``) and every service as one or more processes."""

    stack: Stack
    gateways: RoundRobin
    ingest: RoundRobin
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.stack.settings.home / "logs"

    def spawn(self, service: str, n: int, **env: str) -> None:
        """Replica ``n`` of ``service``, as ``Stack.spawn`` starts the service (the private key for providers only),
        with ``env`` on top, its output in ``logs/<service>-<n>.log``."""
        base = {k: v for k, v in self.stack.env.items() if k != "TUNEFLEET_SECRETS_PRIVATE_KEY"}
        if service.startswith("provider_"):
            base["TUNEFLEET_SECRETS_PRIVATE_KEY"] = self.stack.sealing_keys[1]
        name = f"{service}-{n}"
        with open(self.logs / f"{name}.log", "ab") as out:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"], env={**base, **env}, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        """Each gateway and ingest process answers its /healthz, each other one has logged that it is ready."""
        deadline = time.monotonic() + timeout
        ports = {f"gateway-{n + 1}": p for n, p in enumerate(self.gateways.upstreams)}
        ports |= {f"metrics_ingest-{n + 1}": p for n, p in enumerate(self.ingest.upstreams)}
        waiting = set(self.processes)
        while waiting:
            assert time.monotonic() < deadline, f"not ready in {timeout:.0f} s: {sorted(waiting)}"
            for name in sorted(waiting):
                proc = self.processes[name]
                assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}"
                if name in ports:
                    with contextlib.suppress(httpx.HTTPError):
                        if httpx.get(f"http://127.0.0.1:{ports[name]}/healthz", timeout=5).status_code == 200:
                            waiting.discard(name)
                elif f"{name.rsplit('-', 1)[0]} ready" in self.log(name):
                    waiting.discard(name)
            time.sleep(0.3)

    def stop(self) -> None:
        """The replicas in ``tunefleet up``'s order, then the infrastructure."""
        for service in STOP_ORDER:
            mine = [p for name, p in self.processes.items() if name.rsplit("-", 1)[0] == service]
            for proc in mine:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in mine:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.stack.stop()
        self.gateways.stop()
        self.ingest.stop()


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("replicas") / "home"
    gateways = RoundRobin([free_port() for _ in range(REPLICAS["gateway"])]).start()
    ingest = RoundRobin([free_port() for _ in range(REPLICAS["metrics_ingest"])]).start()
    settings = Settings(home=home, nats_url=None, database_url=None, secret_key=None, secrets_public_key=None,
                        secrets_private_key=None, gateway_port=gateways.upstreams[0],
                        ingest_port=ingest.upstreams[0])
    umask = os.umask(0o077)  # Stack sets it for what it starts; this process's is given back below
    running = Replicated(Stack(settings), gateways, ingest)
    try:
        running.stack.start_infrastructure()
        asyncio.run(running.stack.migrate())
        running.stack.env.update({
            "TUNEFLEET_INGEST_PUBLIC_URL": ingest.url, "TUNEFLEET_GATEWAY_PUBLIC_URL": gateways.url,
            "TUNEFLEET_MODEL_DIRS": str(tmp_path_factory.getbasetemp()),
            "TUNEFLEET_MAX_LOCAL_JOBS_PER_USER": str(JOBS), "TUNEFLEET_LOCAL_POLL_INTERVAL_S": "0.5"})
        running.logs.mkdir(exist_ok=True)
        for service in subjects.SERVICES:
            for n in range(1, REPLICAS.get(service, 1) + 1):
                if service == "gateway":
                    running.spawn(service, n, TUNEFLEET_GATEWAY_PORT=str(gateways.upstreams[n - 1]))
                elif service == "metrics_ingest":
                    running.spawn(service, n, TUNEFLEET_INGEST_PORT=str(ingest.upstreams[n - 1]))
                else:
                    running.spawn(service, n)
        running.wait_ready(180)
    except BaseException:
        running.stop()
        raise
    finally:
        os.umask(umask)
    yield running
    running.stop()


def make_keys(database_url: str) -> list[str]:
    async def make() -> list[str]:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        try:
            return [await create_api_key(pool, f"replicas-{n}") for n in range(USERS)]
        finally:
            await pool.close()

    return asyncio.run(make())


def stored_status_events(nats_url: str) -> Counter[tuple[str, str]]:
    """Every status event JetStream holds: (job id, status) → how many times."""
    import nats
    import orjson
    from nats.js.api import AckPolicy, ConsumerConfig

    async def read() -> Counter[tuple[str, str]]:
        nc = await nats.connect(nats_url)
        try:
            sub = await nc.jetstream().pull_subscribe(subjects.JOB_STATUS_ANY, stream=subjects.EVENTS_STREAM,
                                                      config=ConsumerConfig(ack_policy=AckPolicy.NONE))
            seen: Counter[tuple[str, str]] = Counter()
            while True:
                try:
                    batch = await sub.fetch(500, timeout=2)
                except nats.errors.TimeoutError:
                    return seen
                for msg in batch:
                    event = orjson.loads(msg.data)
                    seen[event["job_id"], event["status"]] += 1
        finally:
            await nc.close()

    return asyncio.run(read())


def stored_rows(database_url: str, job_ids: list[str]) -> dict[str, Counter[str]]:
    """What PostgreSQL holds of the jobs, row by row: history rows and repeated (job, status) pairs, metric points
    and repeated (job, name, step) triples over attempts, models, attempts past the first."""
    queries = {
        "history": "SELECT job_id::text, count(*) FROM job_history WHERE job_id = ANY($1::uuid[]) GROUP BY 1",
        "history_dups": """SELECT job_id::text, sum(n - 1) FROM (SELECT job_id, count(*) AS n FROM job_history
                           WHERE job_id = ANY($1::uuid[]) GROUP BY job_id, status) s GROUP BY 1""",
        "points": "SELECT job_id::text, count(*) FROM metric_points WHERE job_id = ANY($1::uuid[]) GROUP BY 1",
        "point_dups": """SELECT job_id::text, sum(n - 1) FROM (SELECT job_id, count(*) AS n FROM metric_points
                         WHERE job_id = ANY($1::uuid[]) GROUP BY job_id, name, step) s GROUP BY 1""",
        "models": "SELECT job_id::text, count(*) FROM models WHERE job_id = ANY($1::uuid[]) GROUP BY 1",
        "extra_attempts": "SELECT id::text, attempt - 1 FROM jobs WHERE id = ANY($1::uuid[])",
    }

    async def read() -> dict[str, Counter[str]]:
        conn = await asyncpg.connect(database_url)
        try:
            return {name: Counter({r[0]: int(r[1]) for r in await conn.fetch(sql, job_ids)})
                    for name, sql in queries.items()}
        finally:
            await conn.close()

    return asyncio.run(read())


def a_path_of_the_state_machine(path: list[str]) -> bool:
    """Queued to completed, each state once and in the lifecycle's order, each move one the state machine allows.
    A state may be missing where a later report, handled first by the other scheduler, had moved the job past it
    (``shared.states.catch_up`` records only the states a move needs)."""
    return (path[:1] == ["queued"] and path[-1:] == ["completed"] and path == [s for s in HISTORY if s in path]
            and all(can_transition(JobStatus(a), JobStatus(b)) for a, b in itertools.pairwise(path)))


def zombie_trainers(running: Replicated) -> int:
    """Trainers that ended but that their provider process never reaped."""
    found = 0
    for name, proc in running.processes.items():
        if name.startswith("provider_local"):
            with contextlib.suppress(psutil.Error):
                found += sum(c.status() == psutil.STATUS_ZOMBIE for c in psutil.Process(proc.pid).children())
    return found


def test_fifty_jobs_on_replicas_are_each_handled_once(replicated: Replicated, tiny_model_dir, tmp_path: Path,
                                                      capsys):
    from trainer.tiny_model import write_sample_dataset

    running = replicated
    settings = running.stack.settings
    # no connection kept alive: each request is a new connection, so the round-robin alternates the gateways
    clients = [httpx.Client(base_url=running.gateways.url, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                            limits=httpx.Limits(max_keepalive_connections=0))
               for key in make_keys(settings.require_database_url())]
    data = Path(write_sample_dataset(str(tmp_path / "data.jsonl"), rows=16, fmt="instruction"))
    configs = []
    for n, client in enumerate(clients):
        r = client.post("/api/training/datasets", files={"file": ("data.jsonl", data.read_bytes())})
        assert r.status_code in (200, 201), r.text
        configs.append({"config": {
            "name": f"replicas-{n}", "model": {"base_model": str(tiny_model_dir), "max_seq_length": 32},
            "data": {"dataset_id": r.json()["id"], "eval_split": 0.0},
            "training": {"max_steps": STEPS, "batch_size": 4, "logging_steps": 1},
            "predictions": {"enabled": False}}})

    resets: list[str] = []  # status polls whose connection broke, asked again (as a client of a Service does)
    owner: dict[str, httpx.Client] = {}
    live: set[str] = set()
    started = time.monotonic()
    deadline = started + 1500
    while len(owner) < JOBS or live:
        assert time.monotonic() < deadline, f"{len(owner)} deployed, still running: {sorted(live)}"
        while len(live) < IN_FLIGHT and len(owner) < JOBS:
            n = len(owner) % USERS
            r = clients[n].post("/api/training/deploy/local", json=configs[n])
            assert r.status_code == 202, r.text
            owner[r.json()["job_id"]] = clients[n]
            live.add(r.json()["job_id"])
        for job_id in sorted(live):
            if read_status(owner[job_id], job_id, resets) in TERMINAL:
                live.discard(job_id)
        time.sleep(0.5)
    ran_s = time.monotonic() - started

    jobs = {job_id: client.get(f"/api/training/jobs/{job_id}").json() for job_id, client in owner.items()}
    completed = {j for j, job in jobs.items() if job["status"] == "completed"}
    models: Counter[str] = Counter()
    model_deadline = time.monotonic() + 120
    while True:  # a model is registered once the registry has read the completed status
        models = Counter(m["job_id"] for c in clients for m in c.get("/api/models", params={"limit": 500}).json())
        if completed <= set(models) or time.monotonic() > model_deadline:
            break
        time.sleep(0.5)
    steps = {j: [m["step"] for m in client.get(f"/api/training/metrics/{j}", params={"limit": 1000}).json()["metrics"]]
             for j, client in owner.items()}
    health = clients[0].get("/healthz").json()
    events = stored_status_events(settings.require_nats_url())
    rows = stored_rows(settings.require_database_url(), list(owner))
    paths = {j: [h["status"] for h in job["history"]] for j, job in jobs.items()}
    skipped = Counter(state for path in paths.values() for state in HISTORY if state not in path)
    recorded = sum(len(path) for path in paths.values())
    event_dups = sum(n - 1 for (j, _), n in events.items() if j in owner)
    step_dups = {j: len(s) - len(set(s)) for j, s in steps.items()}
    created = {name: CREATED.findall(running.log(name)) for name in running.processes
               if name.startswith("provider_local")}
    trainers = Counter(itertools.chain.from_iterable(created.values()))
    zombies = zombie_trainers(running)

    with capsys.disabled():  # the table shows in every run, not only when the test fails
        print(f"\nreplicas: {len(jobs)} jobs of {STEPS} steps from {USERS} users, {IN_FLIGHT} at once, in "
              f"{ran_s:.0f} s; " + ", ".join(f"{n} {s}" for s, n in REPLICAS.items()))
        print(f"{'exactly once':<34}{'expected':>9}{'stored':>9}{'duplicates':>12}")
        for what, expected, stored, dups in (
                ("jobs completed", JOBS, len(completed), 0),
                ("status transitions (API history)", JOBS * len(HISTORY), recorded,
                 sum(len(p) - len(set(p)) for p in paths.values())),
                ("  states overtaken, not recorded", None, skipped.total(), 0),
                ("status rows (job_history)", recorded, rows["history"].total(), rows["history_dups"].total()),
                ("status events (JetStream)", recorded, sum(n for (j, _), n in events.items() if j in owner),
                 event_dups),
                ("metric steps (API, limit=1000)", JOBS * STEPS, sum(len(s) for s in steps.values()),
                 sum(step_dups.values())),
                ("metric points (metric_points)", None, rows["points"].total(), rows["point_dups"].total()),
                ("models registered", JOBS, models.total(), sum(n - 1 for n in models.values())),
                ("trainers started (provider logs)", JOBS, trainers.total(), sum(n - 1 for n in trainers.values())),
                ("attempts past the first", 0, rows["extra_attempts"].total(), 0),
                ("dead letters", 0, health["dead_letters"]["count"], 0)):
            print(f"{what:<34}{'' if expected is None else expected:>9}{stored:>9}{dups:>12}")
        if skipped:
            print(f"  overtaken: {dict(skipped)} (a later report of the job, handled by the other scheduler first, "
                  "had moved it past that state)")
        print(f"{'replica':<18}what it handled")
        for n, port in enumerate(running.gateways.upstreams, 1):
            name = f"gateway-{n}"
            print(f"{name:<18}{running.gateways.connections[port]} connections, "
                  f"{len(REQUEST.findall(running.log(name)))} requests")
        for name in sorted(running.processes):
            if name.startswith("scheduler"):
                lost = Counter(f"{a} -> {b}" for a, b in IGNORED.findall(running.log(name)))
                print(f"{name:<18}{lost.total()} reports whose change the other replica had made first, ignored "
                      f"({', '.join(f'{k}: {v}' for k, v in sorted(lost.items())) or 'none'})")
        for name, jobs_created in sorted(created.items()):
            print(f"{name:<18}started the trainers of {len(jobs_created)} jobs")
        for n, port in enumerate(running.ingest.upstreams, 1):
            name = f"metrics_ingest-{n}"
            batches = BATCH.findall(running.log(name))
            print(f"{name:<18}{running.ingest.connections[port]} connections, {len(batches)} batches of "
                  f"{len(set(batches))} jobs")
        print(f"{'':<18}{zombies} ended trainers left unreaped by their provider process")
        print(f"{'':<18}{len(resets)} status polls asked again after a broken connection {resets}")

    assert completed == set(jobs), {j: (job["status"], job["status_reason"]) for j, job in jobs.items()
                                    if j not in completed}
    assert all(a_path_of_the_state_machine(path) for path in paths.values()), paths
    assert rows["history_dups"].total() == 0 and all(rows["history"][j] == len(paths[j]) for j in owner)
    assert all(sorted(s for (k, s), _ in events.items() if k == j) == sorted(paths[j]) for j in owner), events
    assert event_dups == 0, events
    assert all(s == list(range(1, STEPS + 1)) for s in steps.values()), steps
    assert rows["point_dups"].total() == 0
    assert all(models[j] == 1 for j in owner) and models.total() == JOBS, models
    assert all(trainers[j] == 1 for j in owner) and trainers.total() == JOBS, trainers
    assert rows["extra_attempts"].total() == 0, rows["extra_attempts"]
    assert health["dead_letters"]["count"] == 0, health["dead_letters"]
    assert zombies == 0  # each provider process reaps the trainers it started, whichever replica polled them

"""The control plane under load: deploys through HTTP until the jobs complete, on a provider whose workload ends at
once, beside the floor of the message bus it runs on.

    python bench/control_plane.py              # about a minute on 2 cores
    python bench/control_plane.py --replicas 1 2   # one gateway and scheduler, then two of each

Starts embedded PostgreSQL and NATS, then the gateway, the scheduler and the local provider service with an instant
workload (``bench/instant_provider.py``) as subprocesses. Then:

1. baseline: ``--deploys`` messages through JetStream to a durable consumer made as the services make theirs
   (``shared.bus.durable_consumer``), from ``--clients`` concurrent publishers, at most ``--in-flight`` unconsumed:
   publish-to-handler latency. No control plane can beat this floor.
2. control plane: ``--deploys`` ``POST /api/training/deploy/local`` from ``--clients`` concurrent clients (as
   ``--users`` users: a user's local deploys are counted under a lock of theirs for the quota), at most
   ``--in-flight`` jobs accepted and not yet completed. For each job: accept (the HTTP round trip of the deploy),
   provision (from the 202 to the provider's provision call, stamped by the provider), completed (from the 202 to
   the ``completed`` status event on NATS). Jobs per second from the first deploy sent to the last completion.

The run also prints the CPU each process spent per job. Reading the figures: with ``--in-flight`` jobs in the
system, a job's time in it is at least in-flight / throughput (Little's law), so once the machine's cores are
busy, more in flight means longer waits, not more jobs per second; ``--in-flight 10`` shows the latencies of an
unloaded control plane.

Replicas: ``--replicas 1 2`` measures with one gateway and one scheduler, then again on fresh servers with two of
each (each client keeps to one gateway, the clients spread over them in turn, as a round-robin in front would do,
without a proxy process of its own taking CPU), and prints the figures side by side with the CPU each job cost,
the bench's own clients included. What limits scaling on a 2-core machine: the copies add processes, not cores.
A job costs 25-40 CPU-ms in all (gateway 3-5, scheduler 6-10, provider 5-10, PostgreSQL 5-9, NATS 1.5-3, clients
2-4; the bench prints the run's), so two cores cap any run near 2000 / that, 50-85 jobs/s, however many replicas
share the work (the ``ceiling`` row). One replica of each stays below that cap: a scheduler holds at most
``WORKERS`` (8) messages of a kind at once, each waiting on PostgreSQL and on JetStream's publish acknowledgements,
so its latency bounds it before the CPU does. A second copy doubles what is in hand and closes part of the gap
(30.6 -> 41.0 jobs/s in one run, 61.6 -> 80.1 in a later one, with accept p99 1076 -> 430 ms), but it competes for
the same two cores with PostgreSQL, NATS, the provider and the clients, and adds context switches and row locks
contended across processes, which can cost it all back (30.1 -> 24.6 in a run that shared the machine with a test
suite): on 2 cores the gain is of the size of the run-to-run noise. Replicas pay where each gets cores of its own.

The last line is ``deploys=N accept_p99_ms=A provision_p99_ms=P jobs_per_s=J`` (one such line per configuration,
prefixed ``replicas=R``, with ``--replicas``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import psutil
from harness import Processes, say, wait_http  # bench/harness.py

from services.cli.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from services.cli.stack import migrate_all
from services.gateway.users import create_api_key
from shared import subjects
from shared.bus import COMMANDS, connect, durable_consumer, ensure_streams
from shared.db import create_pool
from shared.events import TerminateJob
from shared.service import make_broker
from shared.settings import Settings

BENCH = Path(__file__).resolve().parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def wait_logged(procs: Processes, name: str, text: str, patience: float = 120) -> None:
    deadline = time.monotonic() + patience
    while text not in (procs.logs / f"{name}.log").read_text(errors="replace"):
        procs.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not log {text!r} in {patience:.0f}s")
        await asyncio.sleep(0.25)


def describe(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (f"{name:<28} p50 {percentile(ms, 50):7.1f} ms   p99 {percentile(ms, 99):7.1f} ms   "
            f"max {max(ms):7.1f} ms   ({len(ms)} samples)")


async def baseline(args, nats_url: str) -> list[float]:
    """Publish-to-handler latency of the bus alone, at the same concurrency."""
    settings = Settings(nats_url=nats_url, log_level="WARNING")
    broker = make_broker(settings, "bench-baseline")
    sent: dict[str, float] = {}
    seen: list[float] = []
    done = asyncio.Event()
    room = asyncio.Semaphore(args.in_flight)

    @broker.subscriber(subjects.terminate("benchfloor"), stream=COMMANDS, **durable_consumer("bench-floor"))
    async def handler(cmd: TerminateJob) -> None:
        seen.append(time.time() - sent[cmd.job_id])
        room.release()
        if len(seen) == args.deploys:
            done.set()

    await broker.start()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.deploys):
        queue.put_nowait(i)

    async def publisher() -> None:
        while not queue.empty():
            queue.get_nowait()
            await room.acquire()
            cmd = TerminateJob(job_id=str(uuid.uuid4()), provider="benchfloor", user_id="bench", reason="floor")
            sent[cmd.job_id] = time.time()
            await broker.publish(cmd.model_dump(mode="json"), subject=cmd.subject, stream=subjects.COMMANDS_STREAM,
                                 headers={"Nats-Msg-Id": cmd.event_id}, timeout=10)

    await asyncio.gather(*(publisher() for _ in range(args.clients)))
    await asyncio.wait_for(done.wait(), 120)
    await broker.stop()
    return seen


async def control_plane(args, gateways: list[str], keys: list[str], nats_url: str,
                        stamps: Path) -> dict[str, list[float]]:
    accepted: dict[str, float] = {}
    completed: dict[str, float] = {}
    accept_s: list[float] = []
    room = asyncio.Semaphore(args.in_flight)
    all_done = asyncio.Event()
    nc = await connect(nats_url, "bench-watch")

    async def on_status(msg) -> None:
        event = orjson.loads(msg.data)
        if event["status"] in ("completed", "failed") and event["job_id"] not in completed:
            completed[event["job_id"]] = time.time()
            if event["status"] == "failed":
                raise SystemExit(f"job {event['job_id']} failed: {event.get('reason')}")
            room.release()
            if len(completed) == args.deploys:
                all_done.set()

    await nc.subscribe(subjects.JOB_STATUS_ANY, cb=on_status)
    async with contextlib.AsyncExitStack() as opened:
        clients = [await opened.enter_async_context(httpx.AsyncClient(
            base_url=gateway, timeout=60, limits=httpx.Limits(max_connections=args.clients))) for gateway in gateways]
        client = clients[0]
        configs = []
        for key in keys:  # each user deploys on a data set of their own
            r = await client.post("/api/training/datasets", headers={"Authorization": f"Bearer {key}"},
                                  files={"file": ("d.jsonl", b'{"instruction": "say hi", "output": "hi"}\n' * 8)})
            r.raise_for_status()
            configs.append(({"Authorization": f"Bearer {key}"},
                            {"config": {"name": "bench", "model": {"base_model": "bench/instant"},
                                        "data": {"dataset_id": r.json()["id"]}, "training": {"max_steps": 1}}}))
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.deploys):
            queue.put_nowait(i)
        first_sent = time.time()

        async def deployer(n: int) -> None:
            headers, body = configs[n % len(configs)]
            client = clients[n % len(clients)]  # client n keeps to one gateway, as a connection through a proxy
            while not queue.empty():
                queue.get_nowait()
                await room.acquire()
                started = time.time()
                r = await client.post("/api/training/deploy/local", json=body, headers=headers)
                if r.status_code != 202:
                    raise SystemExit(f"deploy answered {r.status_code}: {r.text[:300]}")
                answered = time.time()
                accept_s.append(answered - started)
                accepted[r.json()["job_id"]] = answered

        await asyncio.gather(*(deployer(n) for n in range(args.clients)))
        await asyncio.wait_for(all_done.wait(), args.timeout)
    await nc.close()
    called = {}
    for line in (await asyncio.to_thread(stamps.read_text)).splitlines():
        job_id, when = line.split()
        called.setdefault(job_id, float(when))
    return {"accept": accept_s,
            "provision": [called[j] - accepted[j] for j in accepted],
            "completed": [completed[j] - accepted[j] for j in accepted],
            "span": [max(completed.values()) - first_sent]}


@dataclass
class Figures:
    """One configuration's run: the bus's floor, the control plane's latencies, and CPU seconds per job by part."""

    replicas: int
    floor: list[float]
    measured: dict[str, list[float]]
    cpu_per_job: dict[str, float]

    @property
    def jobs_per_s(self) -> float:
        return len(self.measured["accept"]) / self.measured["span"][0]

    @property
    def ceiling(self) -> float:
        """Jobs per second were every CPU of the machine busy with nothing but jobs at this CPU cost each."""
        return (os.cpu_count() or 1) / sum(self.cpu_per_job.values())

    def line(self) -> str:
        return (f"deploys={len(self.measured['accept'])} "
                f"accept_p99_ms={percentile(self.measured['accept'], 99) * 1000:.1f} "
                f"provision_p99_ms={percentile(self.measured['provision'], 99) * 1000:.1f} "
                f"jobs_per_s={self.jobs_per_s:.1f}")


async def run(args, replicas: int = 1) -> Figures:
    """Fresh servers, ``replicas`` gateways and schedulers, one instant provider; the floor, then the deploys."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tunefleet-bench-cp-"))
    if args.workdir and len(args.replicas) > 1:
        work = work / f"replicas-{replicas}"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    say(f"work folder {work}; {os.cpu_count()} CPUs; {replicas} gateway(s) and scheduler(s); {args.deploys} deploys "
        f"from {args.clients} clients as {args.users} users, at most {args.in_flight} in flight")
    postgres = EmbeddedPostgres(work / "postgres").start()
    nats_server = EmbeddedNats(work / "nats", port=free_port()).start()
    procs = Processes(work / "logs")
    try:
        await migrate_all(postgres.url)
        await ensure_streams(nats_server.url)
        pool = await create_pool(postgres.url)
        keys = [await create_api_key(pool, f"bench-{n}") for n in range(args.users)]
        await pool.close()
        floor = await baseline(args, nats_server.url)
        say(describe("baseline: bus to handler", floor))

        gateway_ports, stamps = [free_port() for _ in range(replicas)], work / "provisions.txt"
        stamps.touch()
        env = {**os.environ, "TUNEFLEET_HOME": str(work / "home"), "TUNEFLEET_DATABASE_URL": postgres.url,
               "TUNEFLEET_NATS_URL": nats_server.url, "TUNEFLEET_SECRET_KEY": uuid.uuid4().hex * 2,
               "TUNEFLEET_LOG_LEVEL": "WARNING",
               "TUNEFLEET_MAX_LOCAL_JOBS_PER_USER": str(args.deploys + 1), "TUNEFLEET_LOCAL_POLL_INTERVAL_S": "0.05",
               "TUNEFLEET_DB_POOL_MAX": "10", "BENCH_PROVISION_LOG": str(stamps),
               "PYTHONPATH": os.pathsep.join([str(BENCH.parent), os.environ.get("PYTHONPATH", "")])}
        for n, port in enumerate(gateway_ports, 1):
            procs.start(f"gateway-{n}", [sys.executable, "-m", "services.gateway"],
                        {**env, "TUNEFLEET_GATEWAY_PORT": str(port)})
            # at INFO for its "scheduler ready" (it logs little else): the copies' consumers are up before the clock
            procs.start(f"scheduler-{n}", [sys.executable, "-m", "services.scheduler"],
                        {**env, "TUNEFLEET_LOG_LEVEL": "INFO"})
        procs.start("provider_local", [sys.executable, str(BENCH / "instant_provider.py")], env)
        gateways = [f"http://127.0.0.1:{port}" for port in gateway_ports]

        def ours_ready(r: httpx.Response) -> bool:
            services = r.json().get("services", {})
            return all(services.get(s) for s in ("gateway", "scheduler", "provider_local"))

        for gateway in gateways:
            await wait_http(procs, f"{gateway}/healthz", ok=ours_ready)
        for n in range(1, replicas + 1):  # health is answered by either copy: each says when it is ready
            await wait_logged(procs, f"scheduler-{n}", "scheduler ready")
        say(f"{replicas} gateway(s), {replicas} scheduler(s) and the instant provider are up")
        me = psutil.Process()  # the clients share the cores too
        before = procs.cpu_seconds() | {"bench clients": sum(me.cpu_times()[:2])}
        measured = await control_plane(args, gateways, keys, nats_server.url, stamps)
        used = procs.cpu_seconds() | {"bench clients": sum(me.cpu_times()[:2])}
        procs.check()
    finally:
        procs.stop()
        nats_server.stop()
        postgres.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    cpu_per_job: dict[str, float] = {}
    for name, spent in before.items():  # the copies of a service together: what a job costs of it
        part = name.rsplit("-", 1)[0] if name.rsplit("-", 1)[-1].isdigit() else name
        cpu_per_job[part] = cpu_per_job.get(part, 0.0) + (used.get(name, 0.0) - spent) / args.deploys
    figures = Figures(replicas, floor, measured, cpu_per_job)
    say("CPU ms per job: " + ", ".join(f"{name} {s * 1000:.1f}" for name, s in cpu_per_job.items()))
    for name in ("accept", "provision", "completed"):
        say(describe(f"control plane: {name}", measured[name]))
    say(f"control plane: {figures.jobs_per_s:.1f} jobs/s over {measured['span'][0]:.1f} s; the floor's median is "
        f"{statistics.median(floor) * 1000:.1f} ms, provision's "
        f"{statistics.median(measured['provision']) * 1000:.1f} ms")
    print(f"baseline_p50_ms={percentile(floor, 50) * 1000:.1f} baseline_p99_ms={percentile(floor, 99) * 1000:.1f}")
    return figures


def side_by_side(runs: list[Figures]) -> str:
    """The configurations' figures in columns."""

    def ms(values: list[float]) -> str:
        return f"{percentile(values, 50) * 1000:.0f} / {percentile(values, 99) * 1000:.0f}"

    heads = [f"{f.replicas} replica{'s' if f.replicas > 1 else ''}" for f in runs]
    rows = [("bus floor p50 / p99 ms", [ms(f.floor) for f in runs])]
    rows += [(f"{name} p50 / p99 ms", [ms(f.measured[name]) for f in runs])
             for name in ("accept", "provision", "completed")]
    rows.append(("jobs per second", [f"{f.jobs_per_s:.1f}" for f in runs]))
    for part in dict.fromkeys(p for f in runs for p in f.cpu_per_job):
        rows.append((f"CPU ms per job: {part}", [f"{f.cpu_per_job.get(part, 0.0) * 1000:.1f}" for f in runs]))
    rows.append(("CPU ms per job: all", [f"{sum(f.cpu_per_job.values()) * 1000:.1f}" for f in runs]))
    rows.append((f"ceiling jobs/s ({os.cpu_count()} CPUs / CPU)", [f"{f.ceiling:.1f}" for f in runs]))
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{'gateways and schedulers':<{width}}" + "".join(f"{h:>16}" for h in heads)]
    lines += [f"{label:<{width}}" + "".join(f"{v:>16}" for v in values) for label, values in rows]
    return "\n".join(lines)


async def compare(args) -> None:
    runs = [await run(args, replicas) for replicas in args.replicas]
    if len(runs) == 1:
        print(runs[0].line(), flush=True)
        return
    print(side_by_side(runs), flush=True)
    for figures in runs:
        print(f"replicas={figures.replicas} {figures.line()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deploys", type=int, default=1000, help="jobs deployed (default 1000)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent HTTP clients (default 50)")
    parser.add_argument("--in-flight", type=int, default=100, help="most jobs accepted and not completed (100)")
    parser.add_argument("--users", type=int, default=50, help="users the clients deploy as, in turn (default 50)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1], metavar="N",
                        help="gateways and schedulers, one run per number given, side by side (default 1; try 1 2)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the last completion")
    parser.add_argument("--workdir", help="keep everything in this folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    asyncio.run(compare(args))


if __name__ == "__main__":
    main()

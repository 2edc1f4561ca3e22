"""The control plane under load: deploys through HTTP until the jobs complete, on a provider whose workload ends at
once, beside the floor of the message bus it runs on.

    python bench/control_plane.py              # about a minute on 2 cores

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

The last line is ``deploys=N accept_p99_ms=A provision_p99_ms=P jobs_per_s=J``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson
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


async def control_plane(args, gateway: str, keys: list[str], nats_url: str, stamps: Path) -> dict[str, list[float]]:
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
    async with httpx.AsyncClient(base_url=gateway, timeout=60,
                                 limits=httpx.Limits(max_connections=args.clients)) as client:
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


async def run(args) -> str:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tunefleet-bench-cp-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    say(f"work folder {work}; {os.cpu_count()} CPUs; {args.deploys} deploys from {args.clients} clients as "
        f"{args.users} users, at most {args.in_flight} in flight")
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

        gateway_port, stamps = free_port(), work / "provisions.txt"
        stamps.touch()
        env = {**os.environ, "TUNEFLEET_HOME": str(work / "home"), "TUNEFLEET_DATABASE_URL": postgres.url,
               "TUNEFLEET_NATS_URL": nats_server.url, "TUNEFLEET_SECRET_KEY": uuid.uuid4().hex * 2,
               "TUNEFLEET_LOG_LEVEL": "WARNING", "TUNEFLEET_GATEWAY_PORT": str(gateway_port),
               "TUNEFLEET_MAX_LOCAL_JOBS_PER_USER": str(args.deploys + 1), "TUNEFLEET_LOCAL_POLL_INTERVAL_S": "0.05",
               "TUNEFLEET_DB_POOL_MAX": "10", "BENCH_PROVISION_LOG": str(stamps),
               "PYTHONPATH": os.pathsep.join([str(BENCH.parent), os.environ.get("PYTHONPATH", "")])}
        procs.start("gateway", [sys.executable, "-m", "services.gateway"], env)
        procs.start("scheduler", [sys.executable, "-m", "services.scheduler"], env)
        procs.start("provider_local", [sys.executable, str(BENCH / "instant_provider.py")], env)
        gateway = f"http://127.0.0.1:{gateway_port}"

        def ours_ready(r: httpx.Response) -> bool:
            services = r.json().get("services", {})
            return all(services.get(s) for s in ("gateway", "scheduler", "provider_local"))

        await wait_http(procs, f"{gateway}/healthz", ok=ours_ready)
        say("gateway, scheduler and the instant provider are up")
        before = procs.cpu_seconds()
        measured = await control_plane(args, gateway, keys, nats_server.url, stamps)
        used = procs.cpu_seconds()
        say("CPU ms per job: " + ", ".join(f"{name} {(used.get(name, 0.0) - spent) / args.deploys * 1000:.1f}"
                                           for name, spent in before.items()))
        procs.check()
    finally:
        procs.stop()
        nats_server.stop()
        postgres.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    jobs_per_s = args.deploys / measured["span"][0]
    for name in ("accept", "provision", "completed"):
        say(describe(f"control plane: {name}", measured[name]))
    say(f"control plane: {jobs_per_s:.1f} jobs/s over {measured['span'][0]:.1f} s; the floor's median is "
        f"{statistics.median(floor) * 1000:.1f} ms, provision's "
        f"{statistics.median(measured['provision']) * 1000:.1f} ms")
    print(f"baseline_p50_ms={percentile(floor, 50) * 1000:.1f} baseline_p99_ms={percentile(floor, 99) * 1000:.1f}")
    return (f"deploys={args.deploys} accept_p99_ms={percentile(measured['accept'], 99) * 1000:.1f} "
            f"provision_p99_ms={percentile(measured['provision'], 99) * 1000:.1f} jobs_per_s={jobs_per_s:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deploys", type=int, default=1000, help="jobs deployed (default 1000)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent HTTP clients (default 50)")
    parser.add_argument("--in-flight", type=int, default=100, help="most jobs accepted and not completed (100)")
    parser.add_argument("--users", type=int, default=50, help="users the clients deploy as, in turn (default 50)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the last completion")
    parser.add_argument("--workdir", help="keep everything in this folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    print(asyncio.run(run(args)), flush=True)


if __name__ == "__main__":
    main()

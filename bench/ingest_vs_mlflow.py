"""metrics_ingest against an MLflow tracking server on the same PostgreSQL.

    pip install -e '.[bench]'
    python bench/ingest_vs_mlflow.py            # about 3 minutes on 2 cores

Starts embedded PostgreSQL and NATS, metrics_ingest and the gateway (uvicorn, as subprocesses) on database
``tunefleet``, and ``mlflow server`` on database ``mlflow`` of the same PostgreSQL. Then:

1. write: after an untimed warm-up of ``--warmup`` points through each, ``--points`` points through each
   from ``--clients`` concurrent client tasks, one job (one MLflow run) per task, two metrics per step.
   Ingest gets compact batches of ``--batch`` points over HTTP; MLflow gets ``log_batch`` calls of 1,000
   metrics (its limit per call) from ``MlflowClient`` threads. Each client encodes its own requests inside
   the timed span; the data is generated before. Timed from the first request to the last acknowledgement;
   afterwards the stored points are counted in both.
2. live: one task feeds ingest ``--live-rate`` points/s for ``--live-seconds`` (a batch every 50 ms, stamped
   with its send time as ``recorded_at``) while a viewer reads the gateway's server-sent events for that job;
   latency = receive time - ``recorded_at`` of each point.
3. read: a ``--series``-point metric is loaded into both (untimed), then timed: the gateway's
   ``GET /api/training/metrics/{job}?name=loss&max_points=1000`` and MLflow's ``get_metric_history``
   (median of ``--reads`` each).

The last line is ``ingest_pps=A mlflow_pps=B ratio=C live_p50_ms=D live_p99_ms=E read_ms=F mlflow_read_ms=G``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import orjson
from harness import Processes, cpu_report, say, wait_http  # bench/harness.py

from services.cli.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from services.cli.stack import migrate_all
from services.gateway.users import create_api_key
from shared.db import create_pool
from shared.tokens import job_token

METRICS = ("loss", "learning_rate")
MLFLOW_BATCH = 1000
LIVE_INTERVAL_S = 0.05


def curve(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [math.exp(-3 * s / n) + rng.gauss(0, 0.02) for s in range(n)]


def mlflow_binary() -> str:
    found = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    if not Path(found).exists():
        raise SystemExit("mlflow is not installed: pip install -e '.[bench]'")
    return found


# -- ingest side ------------------------------------------------------------------------------------------

class Ingest:
    def __init__(self, url: str, secret: str, batch_points: int):
        self.url = url
        self.secret = secret
        self.batch_points = batch_points
        self.throttled = 0

    async def post(self, client: httpx.AsyncClient, job_id: str, body: bytes) -> None:
        headers = {"Authorization": f"Bearer {job_token(self.secret, job_id)}", "Content-Type": "application/json"}
        while True:
            r = await client.post(f"{self.url}/v1/jobs/{job_id}/batches", content=body, headers=headers)
            if r.status_code == 429:  # honour Retry-After, as the trainer's reporter does
                self.throttled += 1
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                continue
            if r.status_code != 200:
                raise RuntimeError(f"ingest answered {r.status_code}: {r.text[:500]}")
            return

    async def push(self, client: httpx.AsyncClient, job_id: str, series: dict[str, list[float]],
                   recorded_at: str | None = None) -> None:
        steps_per_batch = max(1, self.batch_points // len(series))
        n = len(next(iter(series.values())))
        for start in range(0, n, steps_per_batch):
            stop = min(n, start + steps_per_batch)
            steps = list(range(start, stop))
            body = {"batch_id": f"{start}", "series": [{"name": name, "steps": steps, "values": values[start:stop]}
                                                      for name, values in series.items()]}
            if recorded_at:
                body["recorded_at"] = recorded_at
            await self.post(client, job_id, orjson.dumps(body))


async def visible_job(pool, user: str) -> str:
    job_id = str(uuid.uuid4())
    await pool.execute("INSERT INTO deploy_requests (job_id, user_id, provider, message) VALUES ($1, $2, 'local', $3)",
                       job_id, user, {"config": {"name": "bench"}})
    return job_id


# -- MLflow side ------------------------------------------------------------------------------------------

def mlflow_push(tracking_uri: str, run_id: str, series: dict[str, list[float]]) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)
    per_call = MLFLOW_BATCH // len(series)
    n = len(next(iter(series.values())))
    for start in range(0, n, per_call):
        now = int(time.time() * 1000)
        metrics = [Metric(name, values[s], now, s) for name, values in series.items()
                   for s in range(start, min(n, start + per_call))]
        client.log_batch(run_id, metrics=metrics)


# -- phases -----------------------------------------------------------------------------------------------

def client_data(points: int, clients: int) -> list[dict[str, list[float]]]:
    per_client = points // clients // len(METRICS)
    return [{name: curve(per_client, seed=c * 10 + k) for k, name in enumerate(METRICS)} for c in range(clients)]


async def warm_up(args, ingest: Ingest, tracking_uri: str, experiment_id: str) -> None:
    """The same path as the timed runs, untimed, so neither side is timed while it opens connections."""
    from mlflow import MlflowClient

    data = client_data(args.warmup, args.clients)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=args.clients)) as client:
        await asyncio.gather(*(ingest.push(client, str(uuid.uuid4()), series) for series in data))
    ml = MlflowClient(tracking_uri)
    runs = [ml.create_run(experiment_id).info.run_id for _ in range(args.clients)]
    with ThreadPoolExecutor(max_workers=args.clients) as threads:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(threads, mlflow_push, tracking_uri, run, series)
                               for run, series in zip(runs, data, strict=True)))
    say(f"warm-up: {args.warmup:,} points through each, untimed")


async def write_phase(args, procs: Processes, ingest: Ingest, pool, tracking_uri: str,
                      experiment_id: str) -> tuple[float, float]:
    data = client_data(args.points, args.clients)
    per_client = len(data[0][METRICS[0]])
    total = per_client * len(METRICS) * args.clients

    jobs = [str(uuid.uuid4()) for _ in range(args.clients)]
    cpu = procs.cpu_seconds()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=args.clients)) as client:
        started = time.perf_counter()
        await asyncio.gather(*(ingest.push(client, job, series) for job, series in zip(jobs, data, strict=True)))
        elapsed = time.perf_counter() - started
    cpu_ingest = cpu_report(cpu, procs.cpu_seconds())
    stored = await pool.fetchval("SELECT count(*) FROM metric_points WHERE job_id = ANY($1::uuid[])", jobs)
    ingest_pps = total / elapsed
    say(f"write  ingest: {total:,} points, {args.clients} clients, batches of {args.batch:,}: {elapsed:.2f} s = "
        f"{ingest_pps:,.0f} points/s (stored {stored:,}; 429 answers honoured: {ingest.throttled})")
    say(f"       CPU seconds meanwhile: {cpu_ingest}")
    if stored != total:
        raise RuntimeError(f"ingest stored {stored} of {total} points")

    from mlflow import MlflowClient

    ml = MlflowClient(tracking_uri)
    runs = [ml.create_run(experiment_id).info.run_id for _ in range(args.clients)]
    loop = asyncio.get_running_loop()
    cpu = procs.cpu_seconds()
    with ThreadPoolExecutor(max_workers=args.clients) as pool_threads:
        started = time.perf_counter()
        await asyncio.gather(*(loop.run_in_executor(pool_threads, mlflow_push, tracking_uri, run, series)
                               for run, series in zip(runs, data, strict=True)))
        elapsed = time.perf_counter() - started
    cpu_mlflow = cpu_report(cpu, procs.cpu_seconds())
    mlflow_pps = total / elapsed
    check = len(await asyncio.to_thread(ml.get_metric_history, runs[0], METRICS[0]))
    say(f"write  mlflow: {total:,} points, {args.clients} clients, log_batch of {MLFLOW_BATCH:,}: {elapsed:.2f} s = "
        f"{mlflow_pps:,.0f} points/s (run 1 holds {check:,} of {per_client:,} '{METRICS[0]}' points)")
    say(f"       CPU seconds meanwhile: {cpu_mlflow}")
    return ingest_pps, mlflow_pps


async def live_phase(args, ingest: Ingest, pool, gateway: str, api_key: str) -> tuple[float, float]:
    job_id = await visible_job(pool, "bench")
    latencies: list[float] = []
    ready, caught_up = asyncio.Event(), asyncio.Event()
    sent = 0
    done_sending = False

    async def viewer() -> None:
        headers = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(timeout=None) as client, \
                client.stream("GET", f"{gateway}/api/training/jobs/{job_id}/events", headers=headers) as r:
            r.raise_for_status()
            event = ""
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                    ready.set()
                elif line.startswith("data:") and event == "metrics":
                    now = time.time()
                    for point in orjson.loads(line[5:])["metrics"]:
                        when = datetime.fromisoformat(point["recorded_at"]).timestamp()
                        latencies.extend([now - when] * len(point["values"]))
                    if done_sending and len(latencies) >= sent:
                        caught_up.set()

    async def feeder() -> None:
        nonlocal sent, done_sending
        per_batch = int(args.live_rate * LIVE_INTERVAL_S)
        steps_per_batch = per_batch // len(METRICS)
        headers = {"Authorization": f"Bearer {job_token(ingest.secret, job_id)}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=30) as client:
            start = time.monotonic()
            for i in range(int(args.live_seconds / LIVE_INTERVAL_S)):
                await asyncio.sleep(max(0.0, start + i * LIVE_INTERVAL_S - time.monotonic()))
                steps = list(range(i * steps_per_batch, (i + 1) * steps_per_batch))
                body = {"batch_id": str(i), "recorded_at": datetime.now(UTC).isoformat(),
                        "series": [{"name": name, "steps": steps, "values": [0.5] * len(steps)} for name in METRICS]}
                r = await client.post(f"{ingest.url}/v1/jobs/{job_id}/batches", content=orjson.dumps(body),
                                      headers=headers)
                r.raise_for_status()
                sent += len(steps) * len(METRICS)

    view = asyncio.create_task(viewer())
    await asyncio.wait_for(ready.wait(), 30)
    await feeder()
    done_sending = True
    if len(latencies) < sent:
        with suppress(TimeoutError):
            await asyncio.wait_for(caught_up.wait(), 10)
    view.cancel()
    with suppress(asyncio.CancelledError):
        await view
    if not latencies:
        raise RuntimeError("the live viewer received nothing")
    ms = sorted(x * 1000 for x in latencies)
    p50, p99 = ms[len(ms) // 2], ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    say(f"live   {args.live_seconds:.0f} s at {args.live_rate:,} points/s through ingest -> NATS -> gateway SSE: "
        f"viewer got {len(latencies):,} of {sent:,} points; p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")
    return p50, p99


async def read_phase(args, ingest: Ingest, pool, gateway: str, api_key: str, tracking_uri: str,
                     experiment_id: str) -> tuple[float, float]:
    from mlflow import MlflowClient

    values = curve(args.series, seed=99)
    values[args.series // 3] = 5.0  # a spike the downsampled read must keep
    job_id = await visible_job(pool, "bench")
    async with httpx.AsyncClient(timeout=60) as client:
        await ingest.push(client, job_id, {"loss": values})
    ml = MlflowClient(tracking_uri)
    run_id = ml.create_run(experiment_id).info.run_id
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=args.clients) as threads:
        chunk = math.ceil(args.series / args.clients / MLFLOW_BATCH) * MLFLOW_BATCH

        def part(k: int) -> None:
            from mlflow.entities import Metric

            client = MlflowClient(tracking_uri)
            for start in range(k * chunk, min(args.series, (k + 1) * chunk), MLFLOW_BATCH):
                now = int(time.time() * 1000)
                client.log_batch(run_id, metrics=[Metric("loss", values[s], now, s)
                                                  for s in range(start, min(args.series, start + MLFLOW_BATCH))])

        await asyncio.gather(*(loop.run_in_executor(threads, part, k) for k in range(args.clients)))
    say(f"read   loaded a {args.series:,}-point 'loss' series into each")

    ours, theirs = [], []
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(args.reads):
            started = time.perf_counter()
            r = await client.get(f"{gateway}/api/training/metrics/{job_id}", headers=headers,
                                 params={"name": "loss", "max_points": 1000})
            r.raise_for_status()
            page = r.json()
            ours.append(time.perf_counter() - started)
    kept = [m["loss"] for m in page["metrics"]]
    if len(kept) > 1000 or max(kept) != max(values) or min(kept) != min(values):
        raise RuntimeError("the downsampled series lost its minimum or maximum")
    for _ in range(args.reads):
        started = time.perf_counter()
        history = await asyncio.to_thread(ml.get_metric_history, run_id, "loss")
        theirs.append(time.perf_counter() - started)
    read_ms, mlflow_read_ms = statistics.median(ours) * 1000, statistics.median(theirs) * 1000
    say(f"read   ingest+gateway, max_points=1000 of {args.series:,} ({len(kept)} points, min and max kept): "
        f"median {read_ms:.1f} ms of {', '.join(f'{x * 1000:.1f}' for x in ours)}")
    say(f"read   mlflow get_metric_history ({len(history):,} points): median {mlflow_read_ms:.1f} ms of "
        f"{', '.join(f'{x * 1000:.0f}' for x in theirs)}")
    return read_ms, mlflow_read_ms


# -- main -------------------------------------------------------------------------------------------------

async def run(args) -> str:
    import mlflow

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tunefleet-bench-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    say(f"work folder {work}; {os.cpu_count()} CPUs; mlflow {mlflow.__version__}")
    postgres = EmbeddedPostgres(work / "postgres").start()
    nats_server = EmbeddedNats(work / "nats", port=free_port()).start()
    procs = Processes(work / "logs")
    try:
        tf_url = postgres.url
        mlflow_url = postgres.create_database("mlflow")
        socket_dir = parse_qs(urlparse(mlflow_url).query)["host"][0]
        tracking_db = f"postgresql+psycopg2://postgres:{postgres.password}@/mlflow?host={socket_dir}"
        await migrate_all(tf_url)
        pool = await create_pool(tf_url)
        api_key = await create_api_key(pool, "bench")
        secret = secrets.token_urlsafe(32)
        say(f"postgres on {socket_dir} (tunefleet and mlflow databases), nats on {nats_server.url}")

        ingest_port, gateway_port, mlflow_port = free_port(), free_port(), free_port()
        env = {**os.environ, "TUNEFLEET_HOME": str(work / "home"), "TUNEFLEET_DATABASE_URL": tf_url,
               "TUNEFLEET_NATS_URL": nats_server.url, "TUNEFLEET_SECRET_KEY": secret, "TUNEFLEET_LOG_LEVEL": "WARNING",
               "TUNEFLEET_INGEST_PORT": str(ingest_port), "TUNEFLEET_GATEWAY_PORT": str(gateway_port),
               "TUNEFLEET_INGEST_WORKERS": str(args.ingest_workers)}
        procs.start("metrics_ingest", [sys.executable, "-m", "services.metrics_ingest"], env)
        procs.start("gateway", [sys.executable, "-m", "services.gateway"], env)
        # MLflow's background job runner (huey consumers polling PostgreSQL) takes about one core when idle and
        # serves no tracking call, so it is switched off: it would slow both sides of every measurement.
        mlflow_env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        procs.start("mlflow", [mlflow_binary(), "server", "--backend-store-uri", tracking_db,
                               "--default-artifact-root", str(work / "mlartifacts"), "--host", "127.0.0.1",
                               "--port", str(mlflow_port), "--workers", str(args.mlflow_workers)], mlflow_env)
        ingest_url, gateway = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{gateway_port}"
        tracking_uri = f"http://127.0.0.1:{mlflow_port}"
        await wait_http(procs, f"{ingest_url}/healthz")
        await wait_http(procs, f"{gateway}/healthz", ok=lambda r: r.status_code in (200, 503))
        say(f"metrics_ingest ({args.ingest_workers} workers) and gateway up; waiting for mlflow server "
            f"({args.mlflow_workers} workers, job runner off; it migrates its schema on first start)")
        await wait_http(procs, f"{tracking_uri}/health")
        say("mlflow server up")

        from mlflow import MlflowClient

        experiment_id = await asyncio.to_thread(MlflowClient(tracking_uri).create_experiment, "bench")
        ingest = Ingest(ingest_url, secret, args.batch)
        await warm_up(args, ingest, tracking_uri, experiment_id)
        ingest_pps, mlflow_pps = await write_phase(args, procs, ingest, pool, tracking_uri, experiment_id)
        p50, p99 = await live_phase(args, ingest, pool, gateway, api_key)
        read_ms, mlflow_read_ms = await read_phase(args, ingest, pool, gateway, api_key, tracking_uri,
                                                   experiment_id)
        await pool.close()
    finally:
        procs.stop()
        nats_server.stop()
        postgres.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return (f"ingest_pps={ingest_pps:.0f} mlflow_pps={mlflow_pps:.0f} ratio={ingest_pps / mlflow_pps:.1f} "
            f"live_p50_ms={p50:.1f} live_p99_ms={p99:.1f} read_ms={read_ms:.1f} mlflow_read_ms={mlflow_read_ms:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200_000, help="points written through each (default 200000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client tasks for each (default 4)")
    parser.add_argument("--warmup", type=int, default=20_000, help="untimed points through each first")
    parser.add_argument("--batch", type=int, default=5_000, help="points per ingest request (default 5000)")
    parser.add_argument("--live-rate", type=int, default=10_000, help="points/s fed during the live test")
    parser.add_argument("--live-seconds", type=float, default=10.0, help="length of the live test (default 10)")
    parser.add_argument("--series", type=int, default=100_000, help="points of the series read back")
    parser.add_argument("--reads", type=int, default=3, help="timed reads of each kind; the median is reported")
    parser.add_argument("--ingest-workers", type=int, default=2, help="metrics_ingest processes (default 2)")
    parser.add_argument("--mlflow-workers", type=int, default=4, help="mlflow server workers (default 4, its own)")
    parser.add_argument("--workdir", help="keep everything in this folder instead of a temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) afterwards")
    args = parser.parse_args()
    print(asyncio.run(run(args)), flush=True)


if __name__ == "__main__":
    main()

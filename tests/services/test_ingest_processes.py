"""metrics_ingest as real processes: killed with SIGKILL mid-stream, and several at once on one database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from services.cli.embedded import free_port
from shared.settings import Settings
from shared.tokens import job_token

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def ingest_process(settings: Settings, port: int, log: Path, workers: int = 1) -> Iterator[subprocess.Popen]:
    env = {**os.environ, "TUNEFLEET_HOME": str(settings.home), "TUNEFLEET_NATS_URL": settings.require_nats_url(),
           "TUNEFLEET_DATABASE_URL": settings.require_database_url(),
           "TUNEFLEET_SECRET_KEY": settings.require_secret_key(), "TUNEFLEET_INGEST_PORT": str(port),
           "TUNEFLEET_INGEST_WORKERS": str(workers), "TUNEFLEET_LOG_LEVEL": "WARNING"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.metrics_ingest"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"ingest exited with {proc.returncode}: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"ingest did not start: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def compact(batch_id: str, steps: range) -> dict:
    return {"batch_id": batch_id, "series": [{"name": n, "steps": list(steps), "values": [s * 0.5 for s in steps]}
                                             for n in ("loss", "grad_norm")]}


async def stored_batches(pool, job_id: str) -> dict[str, int]:
    rows = await pool.fetch("SELECT batch_id, points FROM ingest_batches WHERE job_id = $1", job_id)
    return {r["batch_id"]: r["points"] for r in rows}


async def test_a_batch_acknowledged_before_sigkill_is_in_postgresql_after_restart(migrated, pool, tmp_path):
    job_id = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {job_token(migrated.require_secret_key(), job_id)}"}
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/jobs/{job_id}/batches"
    batches = [compact(f"b{i}", range(i * 500, i * 500 + 500)) for i in range(400)]
    acked: set[str] = set()

    with ingest_process(migrated, port, tmp_path / "ingest.log") as proc:
        async with httpx.AsyncClient(timeout=10) as client:
            async def sender(mine: list[dict]) -> None:
                for body in mine:
                    try:
                        r = await client.post(url, json=body, headers=headers)
                    except httpx.HTTPError:
                        return  # the process is gone
                    assert r.status_code == 200, r.text
                    acked.add(body["batch_id"])

            senders = [asyncio.create_task(sender(batches[k::8])) for k in range(8)]
            while len(acked) < 40:
                await asyncio.sleep(0.005)
            proc.kill()  # SIGKILL while eight requests are in flight
            await asyncio.gather(*senders)
    assert 40 <= len(acked) < len(batches)

    stored = await stored_batches(pool, job_id)
    assert acked <= set(stored), "an acknowledged batch was lost"
    for batch_id in acked:
        start = int(batch_id[1:]) * 500
        n = await pool.fetchval("SELECT count(*) FROM metric_points WHERE job_id = $1 AND step >= $2 AND step < $3",
                                job_id, start, start + 500)
        assert n == 1000

    with ingest_process(migrated, port, tmp_path / "ingest.log"):
        async with httpx.AsyncClient(timeout=30) as client:
            for body in batches:  # the sender's spool replays everything it has no acknowledgement for, and more
                r = await client.post(url, json=body, headers=headers)
                assert r.status_code == 200
                assert r.json()["duplicate"] is (body["batch_id"] in stored)
    assert await pool.fetchval("SELECT count(*) FROM metric_points WHERE job_id = $1", job_id) == 400 * 1000
    assert len(await stored_batches(pool, job_id)) == 400


async def test_several_ingest_processes_write_each_point_once(migrated, pool, tmp_path):
    job_ids = [str(uuid.uuid4()) for _ in range(3)]
    ports = [free_port(), free_port()]
    with ingest_process(migrated, ports[0], tmp_path / "a.log", workers=2), \
            ingest_process(migrated, ports[1], tmp_path / "b.log"):
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=24)) as client:
            async def post(port: int, job_id: str, body: dict) -> dict:
                headers = {"Authorization": f"Bearer {job_token(migrated.require_secret_key(), job_id)}"}
                r = await client.post(f"http://127.0.0.1:{port}/v1/jobs/{job_id}/batches", json=body,
                                      headers=headers)
                assert r.status_code == 200, r.text
                return {**r.json(), "job_id": job_id, "batch_id": body["batch_id"]}

            sends = []
            for job_id in job_ids:
                for i in range(30):
                    body = compact(f"b{i}", range(i * 200, i * 200 + 400))  # each batch overlaps the next
                    # A balancer retrying on another process: the same batch reaches both, three times.
                    sends += [post(ports[0], job_id, body), post(ports[1], job_id, body), post(ports[0], job_id, body)]
            acks = await asyncio.gather(*sends)
    for job_id in job_ids:
        fresh = [a["batch_id"] for a in acks if a["job_id"] == job_id and not a["duplicate"]]
        assert sorted(fresh) == sorted(f"b{i}" for i in range(30))  # each batch stored by exactly one process
        rows = await pool.fetch("SELECT name, step FROM metric_points WHERE job_id = $1", job_id)
        assert len(rows) == len({(r["name"], r["step"]) for r in rows}) == 2 * (29 * 200 + 400)

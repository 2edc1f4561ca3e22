"""NATS and PostgreSQL going away under the gateway and the services: answers stay 503 (never 500), what was
accepted is delivered once they are back, and /healthz says what each process sees."""

from __future__ import annotations

import asyncio
import uuid

import nats
import orjson
import pytest
from nats.js.errors import NotFoundError

from services.cli.embedded import EmbeddedPostgres, wait_for_port
from services.cli.stack import migrate_all
from services.gateway.deploying import RELAY_AFTER_S, relay_outbox
from services.gateway.users import create_api_key
from services.scheduler.subscribers import wire as wire_scheduler
from shared import subjects
from shared.bus import Bus
from shared.config import DataFormat, TrainingConfig
from shared.db import create_pool
from shared.events import DeployRequested

from .conftest import gateway_client, running_service
from .test_gateway import auth

CONFIG = TrainingConfig.model_validate({"name": "t", "model": {"base_model": "m"}, "data": {"dataset_id": "d"}})


async def test_healthz_shows_each_process_connections_and_the_dead_letters(migrated, api_key):
    async with running_service("scheduler", wire_scheduler, migrated), gateway_client(migrated) as client:
        body = (await client.get("/healthz")).json()
    assert body["services"]["scheduler"] is True and body["services"]["gateway"] is True
    scheduler = body["connections"]["scheduler"]
    assert scheduler["nats"] == {"connected": True, "reconnects": 0} and scheduler["postgres"] == {"ok": True}
    assert body["connections"]["gateway"]["postgres"] == {"ok": True}
    assert body["connections"]["provider_local"] is None  # not running: nothing to say
    assert body["dead_letters"] == {"count": 0, "latest": []}


async def stored_command(nats_url: str, subject: str, timeout: float) -> dict:
    """The last command JetStream stored on ``subject``, waiting for one."""
    nc = await nats.connect(nats_url)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                return orjson.loads((await nc.jetstream().get_msg(subjects.COMMANDS_STREAM, subject=subject)).data)
            except NotFoundError:
                assert asyncio.get_running_loop().time() < deadline, f"nothing stored on {subject}"
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def test_a_stop_accepted_while_nats_is_away_reaches_the_scheduler_once_it_is_back(
        migrated, pool, api_key, nats_server):
    job_id = str(uuid.uuid4())
    await pool.execute("INSERT INTO deploy_requests (job_id, user_id, provider, message, published_at) "
                       "VALUES ($1, 'alice', 'local', '{}'::jsonb, now())", job_id)
    async with gateway_client(migrated) as client:
        nats_server.stop()
        r = await client.post(f"/api/training/jobs/{job_id}/stop", headers=auth(api_key))
        assert r.status_code == 202, r.text  # accepted: stored in the gateway's outbox
        assert await pool.fetchval("SELECT count(*) FROM gateway_outbox WHERE published_at IS NULL") == 1
        nats_server.spawn()
        wait_for_port(nats_server.port)
        stop = await stored_command(nats_server.url, subjects.STOP_REQUESTED, timeout=RELAY_AFTER_S * 6)
        assert stop["job_id"] == job_id and stop["user_id"] == "alice"
        # JetStream stores the message before the relay marks its row sent (and the relay runs in this gateway):
        # wait here for the mark, not just for the message
        deadline = asyncio.get_running_loop().time() + 10
        while await pool.fetchval("SELECT count(*) FROM gateway_outbox WHERE published_at IS NULL"):
            assert asyncio.get_running_loop().time() < deadline, "the relay published the stop, never marked it sent"
            await asyncio.sleep(0.1)


async def test_a_deploy_the_scheduler_never_took_is_published_again(migrated, pool, nats_url, recorder):
    """JetStream's ack says the command was stored; only the job's row says the scheduler took it."""
    cmd = DeployRequested(job_id=str(uuid.uuid4()), user_id="alice", provider="local", config=CONFIG,
                          dataset_path="/d.jsonl", dataset_format=DataFormat.INSTRUCTION, dataset_rows=1)
    await create_api_key(pool, "alice")
    await pool.execute(
        """INSERT INTO deploy_requests (job_id, user_id, provider, message, created_at, published_at)
           VALUES ($1, 'alice', 'local', $2, now() - interval '10 minutes', now() - interval '5 minutes')""",
        cmd.job_id, cmd.model_dump(mode="json"))
    async with running_service("bus-user", lambda ctx: asyncio.sleep(0), migrated) as ctx:
        assert await relay_outbox(pool, Bus(ctx.broker)) == 1
        _, sent = await recorder.wait_for(lambda m: m[0] == subjects.DEPLOY_REQUESTED)
        assert sent["job_id"] == cmd.job_id
        await pool.execute(
            "UPDATE deploy_requests SET published_at = now() - interval '5 minutes' WHERE job_id = $1", cmd.job_id)
        async with running_service("scheduler", wire_scheduler, migrated):
            for _ in range(200):
                if await pool.fetchval("SELECT 1 FROM jobs WHERE id = $1", cmd.job_id):
                    break
                await asyncio.sleep(0.05)
            assert await relay_outbox(pool, Bus(ctx.broker)) == 0  # taken: nothing to send again


@pytest.fixture
async def own_postgres(tmp_path, settings):
    """A PostgreSQL of this test's own, to stop and start under the gateway."""
    server = EmbeddedPostgres(tmp_path / "pg").start()
    await migrate_all(server.url)
    yield server, settings.model_copy(update={"database_url": server.url})
    server.stop()


async def test_the_gateway_answers_503_while_postgresql_restarts_then_serves_again(own_postgres):
    server, settings = own_postgres
    pool = await create_pool(server.url)
    key = await create_api_key(pool, "alice")
    await pool.close()
    async with gateway_client(settings) as client:
        assert (await client.get("/api/models", headers=auth(key))).status_code == 200
        server.stop()
        for path in ("/api/models", f"/api/training/jobs/{uuid.uuid4()}"):
            r = await client.get(path, headers=auth(key))
            assert r.status_code == 503, (path, r.text)
            assert r.headers["Retry-After"] == "2" and r.json()["detail"]["code"] == "service_unavailable"
        health = await client.get("/healthz")
        assert health.status_code == 503 and health.json()["connections"]["gateway"]["postgres"]["ok"] is False
        server.spawn()
        server.wait_ready()
        for _ in range(100):
            if (await client.get("/api/models", headers=auth(key))).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert (await client.get("/api/models", headers=auth(key))).status_code == 200


async def test_a_deploy_the_scheduler_cannot_take_is_published_again_a_few_times_only(migrated, pool, recorder):
    from services.gateway.deploying import MAX_REPUBLISH

    cmd = DeployRequested(job_id=str(uuid.uuid4()), user_id="alice", provider="local", config=CONFIG,
                          dataset_path="/d.jsonl", dataset_format=DataFormat.INSTRUCTION, dataset_rows=1)
    await create_api_key(pool, "alice")
    await pool.execute("INSERT INTO deploy_requests (job_id, user_id, provider, message, created_at, published_at) "
                       "VALUES ($1, 'alice', 'local', $2, now() - interval '1 hour', now() - interval '1 hour')",
                       cmd.job_id, cmd.model_dump(mode="json"))
    async with running_service("bus-user", lambda ctx: asyncio.sleep(0), migrated) as ctx:
        sent = []
        for _ in range(MAX_REPUBLISH + 3):  # no scheduler takes it (it would dead-letter a command it cannot use)
            sent.append(await relay_outbox(pool, Bus(ctx.broker)))
            await pool.execute("UPDATE deploy_requests SET published_at = now() - interval '1 hour'")
    assert sent == [1] * MAX_REPUBLISH + [0] * 3

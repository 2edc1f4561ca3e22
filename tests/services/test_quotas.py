"""Per-user limits: one user cannot take the server's CPU (preflights, local jobs) or connections (event streams)
from the others; going over answers 429 naming the limit and its setting."""

from __future__ import annotations

import asyncio
import contextlib

from services.gateway import preflighting as preflight_route

from .conftest import gateway_client
from .test_gateway import INSTRUCTION_ROWS, auth, config_for, upload


async def test_local_jobs_are_capped_per_user(migrated, api_key, other_key):
    settings = migrated.model_copy(update={"max_local_jobs_per_user": 2})
    async with gateway_client(settings) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()["id"]
        bodies = [{"config": config_for(ds, max_steps=1)}] * 3
        answers = await asyncio.gather(*(client.post("/api/training/deploy/local", headers=auth(api_key), json=b)
                                         for b in bodies))
        assert sorted(r.status_code for r in answers) == [202, 202, 429]
        refused = next(r for r in answers if r.status_code == 429).json()["detail"]
        assert refused["code"] == "quota_exceeded" and "TUNEFLEET_MAX_LOCAL_JOBS_PER_USER=2" in refused["message"]
        ds_bob = (await upload(client, other_key, INSTRUCTION_ROWS)).json()["id"]
        r = await client.post("/api/training/deploy/local", headers=auth(other_key),
                              json={"config": config_for(ds_bob, max_steps=1)})
        assert r.status_code == 202  # another user's share is their own


async def test_preflights_are_capped_per_user(migrated, api_key, other_key, monkeypatch):
    started, finish = asyncio.Event(), asyncio.Event()

    async def slow_preflight(config_json, data_path, data_format, *isolation):
        started.set()
        await finish.wait()
        return {"ok": True}

    monkeypatch.setattr(preflight_route, "run_preflight_process", slow_preflight)
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()["id"]
        body = {"config": config_for(ds, max_steps=1)}
        first = asyncio.create_task(client.post("/api/training/preflight", headers=auth(api_key), json=body))
        await asyncio.wait_for(started.wait(), 10)
        second = await client.post("/api/training/preflight", headers=auth(api_key), json=body)
        assert second.status_code == 429 and "TUNEFLEET_MAX_PREFLIGHTS_PER_USER=1" in second.text
        ds_bob = (await upload(client, other_key, INSTRUCTION_ROWS)).json()["id"]
        bobs = asyncio.create_task(client.post("/api/training/preflight", headers=auth(other_key),
                                               json={"config": config_for(ds_bob, max_steps=1)}))
        finish.set()
        assert (await first).status_code == 200 and (await bobs).status_code == 200
        again = await client.post("/api/training/preflight", headers=auth(api_key), json=body)
        assert again.status_code == 200  # the slot came back


async def test_event_streams_are_capped_per_user(migrated, api_key, other_key, pool):
    """Each open stream holds one of the user's slots until it ends; past the cap the next one gets 429. A stream
    of someone else's job is a 404 and holds nothing."""
    settings = migrated.model_copy(update={"max_streams_per_user": 2})
    async with gateway_client(settings) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()["id"]
        job_id = (await client.post("/api/training/deploy/local", headers=auth(api_key),
                                    json={"config": config_for(ds, max_steps=1)})).json()["job_id"]
        streams = client._transport.app.state.quotas.streams
        streams.take("alice")
        streams.take("alice")  # two streams of alice's are open
        third = await client.get(f"/api/training/jobs/{job_id}/events", headers=auth(api_key))
        assert third.status_code == 429 and "TUNEFLEET_MAX_STREAMS_PER_USER=2" in third.text
        assert streams.held["alice"] == 2  # the refused one took nothing
        foreign = await client.get(f"/api/training/jobs/{job_id}/events", headers=auth(other_key))
        assert foreign.status_code == 404 and "bob" not in streams.held
        streams.give_back("alice")
        # A stream of an ended job: the snapshot, then the end; its slot comes back.
        await pool.execute(
            """INSERT INTO jobs (id, user_id, provider, name, config, dataset_path, dataset_format, dataset_rows,
                                 status) VALUES ($1, 'alice', 'local', 'j', '{}', '/d', 'text', 1, 'completed')""",
            job_id)
        r = await client.get(f"/api/training/jobs/{job_id}/events", headers=auth(api_key))
        assert r.status_code == 200 and r.text.startswith("event: snapshot")
        assert streams.held["alice"] == 1


async def test_a_preflight_whose_client_goes_away_stops_its_process(tmp_path, tiny_model_dir):
    """A cancelled request gives its preflight slot back; the CPU of its process is given back too."""
    import json

    import psutil

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in INSTRUCTION_ROWS))
    config = json.dumps({"model": {"base_model": tiny_model_dir}, "data": {"dataset_id": "d"},
                         "training": {"max_steps": 1000}})
    task = asyncio.create_task(preflight_route.run_preflight_process(config, str(data), "instruction"))

    def preflights() -> list[psutil.Process]:
        found = []
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):  # another test's child may end meanwhile
                if "trainer.preflight" in " ".join(child.cmdline()):
                    found.append(child)
        return found

    for _ in range(100):
        if preflights():
            break
        await asyncio.sleep(0.05)
    [child] = preflights()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE

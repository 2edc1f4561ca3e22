"""A model's exports are the whole deployment's, not one gateway's: the replica asked makes the export, and any
replica lists it and gives its file, from the object store. An export whose replica stopped reads as failed and is
made anew on the next request; one that fails says why."""

from __future__ import annotations

import asyncio
import io
import tarfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from services.gateway.exports import ABANDONED, store_key
from shared.storage import store_from_settings

from .conftest import gateway_client
from .test_checkpoints_route import auth, visible_job
from .test_workload_storage import on_s3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[str, Path]:
    """A tiny base model and a LoRA adapter of it."""
    from tests.adapters import make_lora_adapter
    from trainer.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("exports")
    base = build_tiny_model(str(root / "base"), hidden_size=64, heads=2)
    return base, Path(make_lora_adapter(base, root / "adapter"))


async def register(pool, base_model: str, adapter: Path) -> uuid.UUID:
    model_id = uuid.uuid4()
    await pool.execute(
        """INSERT INTO models (id, job_id, user_id, name, base_model, adapter_path, method, provider, lora_r)
           VALUES ($1, $2, 'alice', 'capitals', $3, $4, 'sft', 'local', 8)""",
        model_id, await visible_job(pool), base_model, str(adapter))
    return model_id


async def exports_of(client, api_key: str, model_id, until: set[str], timeout: float = 180) -> dict[str, dict]:
    """The model's exports by key, once each has a status in ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await client.get(f"/api/models/{model_id}/exports", headers=auth(api_key))
        assert answer.status_code == 200, answer.text
        listed = {e["key"]: e for e in answer.json()}
        if listed and all(e["status"] in until for e in listed.values()):
            return listed
        assert time.monotonic() < deadline, listed
        await asyncio.sleep(0.3)


def exporting(home: Path) -> list[psutil.Process]:
    """The export processes working in a folder under ``home``."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(
                str(home / "exports") in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.mark.usefixtures("s3_credentials")
async def test_an_export_made_by_one_gateway_is_listed_and_given_by_another(migrated, pool, api_key, s3, tmp_path,
                                                                            tiny):
    settings = on_s3(migrated, s3)
    one, two = (settings.model_copy(update={"home": tmp_path / name}) for name in ("one", "two"))
    model_id = await register(pool, *tiny)
    async with gateway_client(one) as first, gateway_client(two) as second:
        started = await first.post(f"/api/models/{model_id}/export", headers=auth(api_key), json={"format": "merged"})
        assert started.status_code == 202 and started.json()["status"] == "running", started.text
        run = await pool.fetchval("SELECT run_id FROM model_exports WHERE model_id = $1", model_id)
        asked_again = await second.post(f"/api/models/{model_id}/export", headers=auth(api_key),
                                        json={"format": "merged"})
        assert asked_again.json()["status"] in ("running", "done")  # the first one's, not a second run
        assert await pool.fetchval("SELECT run_id FROM model_exports WHERE model_id = $1", model_id) == run
        assert not exporting(tmp_path / "two")

        listed = await exports_of(second, api_key, model_id, {"done", "failed"})
        assert listed["merged"]["status"] == "done", listed
        download = await second.get(f"/api/models/{model_id}/download", headers=auth(api_key),
                                    params={"export": "merged"})
        assert download.status_code == 200, download.text
        assert 'filename="capitals-v1-merged.tar"' in download.headers["content-disposition"]
        with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
            names = tar.getnames()
        assert "capitals-v1-merged/config.json" in names and any(n.endswith(".safetensors") for n in names)
        assert listed["merged"]["size_bytes"] == len(download.content)
        not_made = await second.get(f"/api/models/{model_id}/download", headers=auth(api_key),
                                    params={"export": "gguf-q8_0"})
        assert not_made.status_code == 409 and "not made" in not_made.json()["detail"]["message"]

    store = store_from_settings(settings)
    assert await store.size(store_key(model_id, "merged")) == len(download.content)
    assert not list((tmp_path / "one" / "exports").iterdir())  # the run's folder is gone once its file is stored


async def test_a_failed_export_says_why_and_one_left_by_a_stopped_gateway_is_made_anew(migrated, pool, api_key,
                                                                                      other_key, tmp_path, tiny):
    settings = migrated.model_copy(update={"home": tmp_path / "home"})
    stray = settings.home / "exports" / str(uuid.uuid4()) / "merged-0123abcd"
    stray.mkdir(parents=True)  # a run of a gateway that died midway
    model_id = await register(pool, str(tmp_path / "no-such-base"), tiny[1])
    async with gateway_client(settings) as client:
        assert not stray.exists()
        started = await client.post(f"/api/models/{model_id}/export", headers=auth(api_key), json={"format": "merged"})
        assert started.status_code == 202, started.text
        assert (await client.post(f"/api/models/{model_id}/export", headers=auth(other_key),
                                  json={"format": "merged"})).status_code == 404
        assert (await client.get(f"/api/models/{model_id}/exports", headers=auth(other_key))).status_code == 404
        failed = (await exports_of(client, api_key, model_id, {"failed", "done"}))["merged"]
        assert failed["status"] == "failed" and "no-such-base" in failed["error"], failed
        refused = await client.get(f"/api/models/{model_id}/download", headers=auth(api_key),
                                   params={"export": "merged"})
        assert refused.status_code == 409 and "failed" in refused.json()["detail"]["message"]

        # A run whose replica stopped renewing it reads as failed, and the next request makes it anew.
        await pool.execute("UPDATE model_exports SET status = 'running', error = NULL, "
                           "heartbeat_at = now() - interval '5 minutes' WHERE model_id = $1", model_id)
        abandoned = (await exports_of(client, api_key, model_id, {"failed"}))["merged"]
        assert abandoned["error"] == ABANDONED
        before = await pool.fetchval("SELECT run_id FROM model_exports WHERE model_id = $1", model_id)
        again = await client.post(f"/api/models/{model_id}/export", headers=auth(api_key), json={"format": "merged"})
        assert again.json()["status"] == "running"
        assert await pool.fetchval("SELECT run_id FROM model_exports WHERE model_id = $1", model_id) != before
        assert exporting(settings.home)
    # The gateway stopped while the export ran: its process is gone, and its row says so.
    row = await pool.fetchrow("SELECT status, error FROM model_exports WHERE model_id = $1", model_id)
    assert (row["status"], row["error"]) == ("failed", ABANDONED)
    assert not exporting(settings.home)
    assert not list((settings.home / "exports").iterdir())


async def test_a_heartbeat_the_database_refuses_for_a_moment_stops_no_export(migrated):
    import asyncpg

    from services.gateway.exports import Exports

    class Away:
        async def execute(self, *args):
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")

    await Exports(Away(), migrated, store_from_settings(migrated))._renew(uuid.uuid4(), "merged", "0123abcd")

"""The registry's side of serving against real NATS and PostgreSQL: versions of one name, the serve command of a
job configured with ``serve``, a serving refused by the adapter checks, and servings brought back after a restart."""

from __future__ import annotations

import asyncio
import uuid

from faststream.nats import NatsBroker

from services.model_registry.subscribers import wire as wire_registry
from shared import subjects
from shared.bus import publish
from shared.config import TrainingConfig
from shared.events import JobStatusChanged, ServeRequested, ServeStopRequested
from shared.ids import derived_id
from shared.jobspec import TrainerResult
from shared.states import JobStatus

from .conftest import running_service


def completed(job_id: str, config: dict, adapter_path: str) -> JobStatusChanged:
    return JobStatusChanged(
        job_id=job_id, user_id="alice", provider="local", previous=JobStatus.RUNNING, status=JobStatus.COMPLETED,
        dataset_rows=10,
        config=TrainingConfig.model_validate({"model": {"base_model": "/nowhere/base"},
                                              "data": {"dataset_id": "ds-1"}, **config}),
        result=TrainerResult(status="completed", adapter_path=adapter_path, final_loss=0.4))


async def until(predicate, timeout: float = 20.0):
    async def poll():
        while not (found := await predicate()):
            await asyncio.sleep(0.05)
        return found

    return await asyncio.wait_for(poll(), timeout)


async def test_models_of_one_name_get_versions_and_a_serve_section_starts_a_serving(migrated, pool, recorder,
                                                                                    nats_url, tmp_path):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    not_an_adapter = tmp_path / "adapter"
    not_an_adapter.write_text("a file, not a folder")
    async with running_service("model_registry", wire_registry, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, completed(first, {"name": "capitals"}, "/a"))
        await until(lambda: pool.fetchval("SELECT count(*) FROM models WHERE job_id = $1", first))
        await publish(broker, completed(second, {"name": "capitals", "serve": {"server_type": "builtin"}},
                                        str(not_an_adapter)))
        await publish(broker, completed(second, {"name": "capitals", "serve": {"server_type": "builtin"}},
                                        str(not_an_adapter)))  # a redelivery changes nothing
        serving_id = derived_id(second, "serving")
        row = await until(lambda: pool.fetchrow("SELECT * FROM servings WHERE id = $1 AND state = 'failed'",
                                                serving_id))
        await broker.stop()

    versions = await pool.fetch("SELECT job_id::text, version, config, dataset_id FROM models WHERE name = 'capitals' "
                                "AND user_id = 'alice' ORDER BY version")
    assert [(r["job_id"], r["version"]) for r in versions[-2:]] == [(first, 1), (second, 2)]
    assert versions[-1]["dataset_id"] == "ds-1" and versions[-1]["config"]["serve"]["server_type"] == "builtin"
    serves = [m for s, m in recorder.messages if s == subjects.SERVE_REQUESTED]
    # one command (a copy republished on redelivery has the same message id, which JetStream drops)
    assert {m["event_id"] for m in serves} == {derived_id(second, "serve-requested")}
    assert serves[0]["serving_id"] == serving_id and serves[0]["name"] == "capitals"
    # The adapter checks refused it before any engine started, and said what to give instead.
    assert "adapter_config.json" in row["reason"]
    changed = [m for s, m in recorder.messages if s == subjects.serving_status(serving_id)]
    assert {m["state"] for m in changed} == {"failed"}
    assert await pool.fetchval("SELECT count(*) FROM servings WHERE id = $1", serving_id) == 1


async def test_a_restarted_registry_starts_its_servings_again(migrated, pool, recorder, nats_url, tmp_path):
    serving_id = str(uuid.uuid4())
    cmd = ServeRequested(job_id=str(uuid.uuid4()), serving_id=serving_id, user_id="alice", model_id=str(uuid.uuid4()),
                         name=f"kept-{serving_id[:8]}", server_type="builtin", adapter_path=str(tmp_path / "gone"),
                         base_model="/nowhere/base")
    await pool.execute(
        """INSERT INTO servings (id, user_id, model_id, name, server_type, state, base_url, engine_model, request)
           VALUES ($1, 'alice', $2, $3, 'builtin', 'ready', 'http://127.0.0.1:1/v1', 'm', $4)""",
        serving_id, cmd.model_id, cmd.name, cmd.model_dump(mode="json"))
    async with running_service("model_registry", wire_registry, migrated):
        # Its engine was a process of the registry that stopped: it is started again, and here its adapter is gone.
        row = await until(lambda: pool.fetchrow("SELECT * FROM servings WHERE id = $1 AND state = 'failed'",
                                                serving_id))
    assert "adapter_config.json" in row["reason"]


async def test_a_stop_that_overtakes_its_serve_command_keeps_the_serving_from_starting(migrated, pool, nats_url,
                                                                                       tmp_path):
    serving_id = str(uuid.uuid4())
    cmd = ServeRequested(job_id=str(uuid.uuid4()), serving_id=serving_id, user_id="alice", model_id=str(uuid.uuid4()),
                         name=f"late-{serving_id[:8]}", server_type="builtin", adapter_path=str(tmp_path),
                         base_model="/nowhere/base")
    async with running_service("model_registry", wire_registry, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, ServeStopRequested(job_id=serving_id, serving_id=serving_id, user_id="alice"))
        await until(lambda: pool.fetchrow("SELECT 1 FROM servings WHERE id = $1", serving_id))
        await publish(broker, cmd)
        await asyncio.sleep(1.0)
        await broker.stop()
    row = await pool.fetchrow("SELECT * FROM servings WHERE id = $1", serving_id)
    assert row["state"] == "stopped" and "before it started" in row["reason"]

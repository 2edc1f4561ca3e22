"""GET /api/training/jobs/{id}/checkpoints: the checkpoints in a job's output, with their losses, by step."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from .conftest import gateway_client


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def visible_job(pool) -> str:
    """A job of alice's, as the gateway records an accepted deploy."""
    job_id = str(uuid.uuid4())
    await pool.execute("INSERT INTO deploy_requests (job_id, user_id, provider, message, published_at) "
                       "VALUES ($1, 'alice', 'local', '{}'::jsonb, now())", job_id)
    return job_id


def checkpoint(output: Path, step: int, history: list[dict] | None = None) -> Path:
    folder = output / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if history is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    return folder


HISTORY = [
    {"step": 1, "loss": 3.0},
    {"step": 2, "loss": 2.5},
    {"step": 2, "eval_loss": 2.7, "eval_runtime": 0.1},
    {"step": 4, "loss": 2.0},
    {"step": 5, "loss": 1.5},
    {"step": 6, "eval_loss": 1.9},
    {"step": 7, "loss": 1.0},  # after the checkpoint's step: not its loss
]


async def test_a_registered_models_checkpoints_are_listed_by_step(migrated, pool, api_key, other_key, tmp_path):
    job_id = await visible_job(pool)
    output = tmp_path / "out"
    (output / "adapter").mkdir(parents=True)
    checkpoint(output, 6, HISTORY)
    checkpoint(output, 2, HISTORY[:3])
    checkpoint(output, 12)  # being written: no trainer state yet
    (output / "checkpoints" / "README.md").write_text("model card")
    await pool.execute(
        """INSERT INTO models (id, job_id, user_id, name, base_model, adapter_path, method, provider)
           VALUES ($1, $2, 'alice', 'm', 'b', $3, 'sft', 'local')""", uuid.uuid4(), job_id, str(output / "adapter"))
    async with gateway_client(migrated) as client:
        r = await client.get(f"/api/training/jobs/{job_id}/checkpoints", headers=auth(api_key))
        assert r.status_code == 200, r.text
        listed = r.json()
        assert [(c["name"], c["step"], c["loss"], c["eval_loss"]) for c in listed] == [
            ("checkpoints/checkpoint-2", 2, 2.5, 2.7),
            ("checkpoints/checkpoint-6", 6, 1.5, 1.9),
        ]
        assert [c["path"] for c in listed] == [str(output / "checkpoints" / f"checkpoint-{s}") for s in (2, 6)]
        assert all(c["created_at"] for c in listed)

        for key, job in ((other_key, job_id), (api_key, str(uuid.uuid4()))):
            r = await client.get(f"/api/training/jobs/{job}/checkpoints", headers=auth(key))
            assert r.status_code == 404, r.text
            assert f"job {job} not found" in r.json()["detail"]["message"]


async def test_before_registration_the_newest_attempt_with_checkpoints_is_listed(migrated, pool, api_key):
    job_id = await visible_job(pool)
    artifacts = migrated.home / "artifacts" / job_id
    async with gateway_client(migrated) as client:
        url = f"/api/training/jobs/{job_id}/checkpoints"
        r = await client.get(url, headers=auth(api_key))
        assert r.status_code == 200 and r.json() == []

        nan_eval = [{"step": 3, "loss": 0.5}, {"step": 3, "eval_loss": float("nan")}]
        first = checkpoint(artifacts / "attempt-1", 3, nan_eval)
        (artifacts / "attempt-2" / "checkpoints").mkdir(parents=True)  # a retry that has not saved one yet
        r = await client.get(url, headers=auth(api_key))
        assert [(c["path"], c["loss"], c["eval_loss"]) for c in r.json()] == [(str(first), 0.5, None)]

        second = checkpoint(artifacts / "attempt-2", 5, [{"step": 4, "loss": 0.4}])
        (second.parent / "checkpoint-9").mkdir()
        (second.parent / "checkpoint-9" / "trainer_state.json").write_text("{not json")
        r = await client.get(url, headers=auth(api_key))
        assert [(c["name"], c["path"], c["loss"], c["eval_loss"]) for c in r.json()] == [
            ("checkpoints/checkpoint-5", str(second), 0.4, None),
            ("checkpoints/checkpoint-9", str(second.parent / "checkpoint-9"), None, None),
        ]

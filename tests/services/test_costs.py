"""``GET /api/costs``: a user's jobs' cost over a period, by provider, day or job; nobody else's."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.gateway.users import create_api_key
from services.scheduler.repository import JobRepository
from shared.config import DataFormat, TrainingConfig
from shared.events import DeployRequested

from .conftest import gateway_client
from .test_gateway import auth

CONFIG = TrainingConfig.model_validate({"name": "c", "model": {"base_model": "m"}, "data": {"dataset_id": "d"}})


async def job(pool, user: str, provider: str, created: str, cost: float, status: str = "completed") -> str:
    job_id = str(uuid.uuid4())
    await JobRepository(pool).create(DeployRequested(
        job_id=job_id, user_id=user, provider=provider, config=CONFIG, dataset_path="/d", dataset_rows=1,
        dataset_format=DataFormat.INSTRUCTION))
    await pool.execute("UPDATE jobs SET created_at = $2, cost_usd = $3, status = $4 WHERE id = $1", job_id,
                       datetime.fromisoformat(created).replace(tzinfo=UTC), cost, status)
    return job_id


async def test_costs_are_summed_by_provider_day_and_job_for_the_user_alone(migrated, pool, api_key):
    first = await job(pool, "alice", "runpod", "2026-11-02T10:00", 1.25)
    await job(pool, "alice", "runpod", "2026-11-03T23:30", 0.5, status="running")
    await job(pool, "alice", "lambda", "2026-11-03T01:00", 2.0)
    await job(pool, "alice", "lambda", "2026-10-01T00:00", 9.0)  # before the period
    await job(pool, "bob", "runpod", "2026-11-02T12:00", 100.0)  # someone else's
    period = {"from": "2026-11-01", "to": "2026-12-01"}
    async with gateway_client(migrated) as client:
        r = await client.get("/api/costs", headers=auth(api_key), params=period)
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["from"].startswith("2026-11-01T00:00:00") and report["group_by"] == "provider"
        assert report["total_usd"] == 3.75 and report["jobs"] == 3 and report["currency"] == "USD"
        assert [(g["key"], g["cost_usd"], g["jobs"], g["running"]) for g in report["groups"]] == [
            ("lambda", 2.0, 1, 0), ("runpod", 1.75, 2, 1)]
        days = (await client.get("/api/costs", headers=auth(api_key), params={**period, "group_by": "day"})).json()
        assert [(g["key"], g["cost_usd"]) for g in days["groups"]] == [("2026-11-02", 1.25), ("2026-11-03", 2.5)]
        jobs = (await client.get("/api/costs", headers=auth(api_key), params={**period, "group_by": "job"})).json()
        assert [g["cost_usd"] for g in jobs["groups"]] == [2.0, 1.25, 0.5]  # dearest first
        assert jobs["groups"][1]["key"] == first and jobs["groups"][1]["name"] == "c"
        assert jobs["groups"][1]["status"] == "completed"

        bob = await create_api_key(pool, "bob")
        theirs = (await client.get("/api/costs", headers=auth(bob), params=period)).json()
        assert theirs["total_usd"] == 100.0 and theirs["jobs"] == 1

        for params, field in (({"from": "2026-12-01", "to": "2026-11-01"}, "from"),
                              ({"from": "2020-01-01", "to": "2026-01-01"}, "from"),
                              ({"group_by": "week"}, "group_by"), ({"from": "yesterday"}, "from")):
            r = await client.get("/api/costs", headers=auth(api_key), params=params)
            assert r.status_code == 422, (params, r.text)
            assert field in r.text

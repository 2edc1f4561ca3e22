"""A retried job keeps every attempt's points: those of a retry that started over are not dropped as duplicates of
the first attempt's, nor are the first attempt's lost. The job's curve shows each attempt up to where a later one
began; ``?attempt=N`` shows one attempt whole; every row says which attempt logged it."""

from __future__ import annotations

import uuid

from services.gateway.users import create_api_key
from shared.tokens import job_token

from .conftest import gateway_client
from .test_gateway import auth
from .test_metrics_ingest import client_for


def batch(attempt: int, steps, loss: float, predictions: bool = False) -> dict:
    body = {"batch_id": str(uuid.uuid4()), "attempt": attempt,
            "metrics": [{"step": s, "epoch": s / 100, "values": {"loss": loss}} for s in steps]}
    if predictions:
        body["predictions"] = [{"step": s, "epoch": s / 100, "sample_index": 0, "prompt": "p",
                                "generated": f"attempt {attempt}", "expected": "e"} for s in steps]
    return body


async def job_with(pool, migrated, batches: list[dict]) -> tuple[str, str]:
    """A job of alice's whose trainers sent ``batches`` to ingest; returns (job id, alice's key)."""
    key, job_id = await create_api_key(pool, "alice"), str(uuid.uuid4())
    await pool.execute("INSERT INTO deploy_requests (job_id, user_id, provider, message) VALUES ($1, 'alice', "
                       "'local', '{}'::jsonb)", job_id)
    ctx, client = await client_for(migrated)
    headers = {"Authorization": f"Bearer {job_token(migrated.require_secret_key(), job_id)}"}
    try:
        for body in batches:
            r = await client.post(f"/v1/jobs/{job_id}/batches", json=body, headers=headers)
            assert r.status_code == 200 and not r.json()["duplicate"], r.text
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)
    return job_id, key


async def test_a_retry_that_started_over_keeps_both_attempts_points(migrated, pool):
    job_id, key = await job_with(pool, migrated, [batch(1, range(1, 11), 1.0, predictions=True),
                                                  batch(2, range(1, 5), 2.0, predictions=True)])
    assert await pool.fetchval("SELECT count(*) FROM metric_points WHERE job_id = $1", job_id) == 14
    async with gateway_client(migrated) as client:
        url = f"/api/training/metrics/{job_id}"
        curve = (await client.get(url, headers=auth(key), params={"limit": 100})).json()
        assert [(m["step"], m["attempt"], m["loss"]) for m in curve["metrics"]] == [(s, 2, 2.0) for s in range(1, 5)]
        assert curve["total_count"] == 4
        assert curve["attempts"] == [{"attempt": 1, "first_step": 1, "superseded_from": 1},
                                     {"attempt": 2, "first_step": 1, "superseded_from": None}]
        first = (await client.get(url, headers=auth(key), params={"attempt": 1, "limit": 100})).json()
        assert [(m["step"], m["attempt"]) for m in first["metrics"]] == [(s, 1) for s in range(1, 11)]
        down = (await client.get(url, headers=auth(key), params={"attempt": 1, "max_points": 4})).json()
        assert {m["attempt"] for m in down["metrics"]} == {1} and down["downsampling"]["series"][0]["raw_points"] == 10
        job = (await client.get(f"/api/training/jobs/{job_id}", headers=auth(key))).json()
        assert job["latest_metrics"]["step"] == 4 and job["latest_metrics"]["loss"] == 2.0
        assert job["latest_metrics"]["attempt"] == 2
        predictions = (await client.get(f"/api/training/predictions/{job_id}", headers=auth(key))).json()
        assert [(p["step"], p["attempt"]) for p in predictions["predictions"]] == [(s, 2) for s in (4, 3, 2, 1)]
        earlier = (await client.get(f"/api/training/predictions/{job_id}", headers=auth(key),
                                    params={"attempt": 1})).json()
        assert len(earlier["predictions"]) == 10 and {p["generated"] for p in earlier["predictions"]} == {"attempt 1"}


async def test_a_retry_resumed_from_a_checkpoint_carries_the_curve_on(migrated, pool):
    """Attempt 1 logged steps 1..10 and saved a checkpoint at step 8; attempt 2 resumed there and logged 9..12."""
    job_id, key = await job_with(pool, migrated, [batch(1, range(1, 11), 1.0), batch(2, range(9, 13), 2.0)])
    async with gateway_client(migrated) as client:
        curve = (await client.get(f"/api/training/metrics/{job_id}", headers=auth(key))).json()
    assert [(m["step"], m["attempt"]) for m in curve["metrics"]] == \
        [(s, 1) for s in range(1, 9)] + [(s, 2) for s in range(9, 13)]
    assert curve["attempts"][0] == {"attempt": 1, "first_step": 1, "superseded_from": 9}

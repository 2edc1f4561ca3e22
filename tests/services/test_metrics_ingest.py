"""Metrics ingest over HTTP against real PostgreSQL and NATS: auth, idempotency, fan-out, limits."""

from __future__ import annotations

import uuid

import httpx

from services.metrics_ingest.app import MAX_BATCH_BYTES, create_app
from shared import subjects
from shared.tokens import job_token


def batch(batch_id: str | None = None, steps=range(1, 4), predictions=()) -> dict:
    return {"batch_id": batch_id or str(uuid.uuid4()),
            "metrics": [{"step": s, "epoch": s / 10, "values": {"loss": 1.0 / s, "learning_rate": 1e-3}}
                        for s in steps],
            "predictions": [{"step": 3, "epoch": 0.3, "sample_index": i, "prompt": "p", "generated": "g",
                             "expected": "e", "scores": {"bleu": 12.5, "rouge_l": 0.5}} for i in predictions]}


async def client_for(settings):
    app = create_app(settings)
    ctx = app.router.lifespan_context(app)
    await ctx.__aenter__()
    return ctx, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest")


async def test_batches_are_stored_once_and_fanned_out(migrated, pool, recorder):
    job_id = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {job_token(migrated.require_secret_key(), job_id)}"}
    ctx, client = await client_for(migrated)
    try:
        first = batch(predictions=(0, 1))
        r = await client.post(f"/v1/jobs/{job_id}/batches", json=first, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted_points": 6, "accepted_predictions": 2, "duplicate": False}
        # The same batch again (a retry), and an overlapping batch under a new id: nothing doubles.
        again = await client.post(f"/v1/jobs/{job_id}/batches", json=first, headers=headers)
        assert again.json()["duplicate"] is True
        await client.post(f"/v1/jobs/{job_id}/batches", json=batch(steps=range(2, 6)), headers=headers)
        _, live = await recorder.wait_for(lambda m: m[0] == subjects.job_metrics(job_id))
        _, live_pred = await recorder.wait_for(lambda m: m[0] == subjects.job_predictions(job_id))
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)
    rows = await pool.fetch("SELECT step, name FROM metric_points WHERE job_id = $1 ORDER BY step, name", job_id)
    assert [(r["step"], r["name"]) for r in rows] == [(s, n) for s in range(1, 6) for n in ("learning_rate", "loss")]
    stored = await pool.fetch("SELECT scores FROM predictions WHERE job_id = $1", job_id)
    assert [r["scores"] for r in stored] == [{"bleu": 12.5, "rouge_l": 0.5}] * 2
    assert [m["step"] for m in live["metrics"]] == [1, 2, 3]
    assert len(live_pred["predictions"]) == 2


async def test_wrong_token_bad_body_and_oversized_batch(migrated):
    job_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    secret = migrated.require_secret_key()
    ctx, client = await client_for(migrated)
    try:
        r = await client.post(f"/v1/jobs/{job_id}/batches", json=batch())
        assert r.status_code == 401
        r = await client.post(f"/v1/jobs/{job_id}/batches", json=batch(),
                              headers={"Authorization": f"Bearer {job_token(secret, other)}"})
        assert r.status_code == 401  # another job's token
        good = {"Authorization": f"Bearer {job_token(secret, job_id)}"}
        r = await client.post(f"/v1/jobs/{job_id}/batches", json={"batch_id": "x", "metrics": [{"step": "a"}]},
                              headers=good)
        assert r.status_code == 422
        big = b"x" * (MAX_BATCH_BYTES + 1)
        r = await client.post(f"/v1/jobs/{job_id}/batches", content=big, headers=good)
        assert r.status_code == 413
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)

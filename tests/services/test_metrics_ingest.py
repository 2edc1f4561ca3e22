"""Metrics ingest over HTTP against real PostgreSQL and NATS: auth, idempotency, fan-out, limits."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime

import httpx
import uvicorn

from services.metrics_ingest.app import MAX_BATCH_BYTES, create_app
from services.metrics_ingest.config import IngestConfig
from services.metrics_ingest.limits import Throttle
from shared import subjects
from shared.tokens import job_token


def batch(batch_id: str | None = None, steps=range(1, 4), predictions=()) -> dict:
    return {"batch_id": batch_id or str(uuid.uuid4()),
            "metrics": [{"step": s, "epoch": s / 10, "values": {"loss": 1.0 / s, "learning_rate": 1e-3}}
                        for s in steps],
            "predictions": [{"step": 3, "epoch": 0.3, "sample_index": i, "prompt": "p", "generated": "g",
                             "expected": "e", "scores": {"bleu": 12.5, "rouge_l": 0.5}} for i in predictions]}


async def client_for(settings, config: IngestConfig | None = None):
    app = create_app(settings, config)
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


# -- volume, idempotency and backpressure -----------------------------------------------------------------

def compact(batch_id: str | None = None, steps=range(1, 4), names=("loss", "lr"), **extra) -> dict:
    steps = list(steps)
    return {"batch_id": batch_id or str(uuid.uuid4()), **extra,
            "series": [{"name": n, "steps": steps, "values": [s / 100 for s in steps],
                        "epochs": [s / 10 for s in steps]} for n in names]}


def headers_for(settings, job_id: str) -> dict:
    return {"Authorization": f"Bearer {job_token(settings.require_secret_key(), job_id)}"}


async def point_count(pool, job_id: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM metric_points WHERE job_id = $1", job_id)


async def test_compact_series_mix_with_rows_and_fan_out_per_step(migrated, pool, recorder):
    job_id = str(uuid.uuid4())
    ctx, client = await client_for(migrated)
    try:
        body = compact(steps=[3, 1, 2, 2], recorded_at="2025-01-01T00:00:00Z")  # out of order, step 2 twice
        body["series"][0]["values"] = [0.3, 0.1, 0.2, 9.9]
        body["metrics"] = [{"step": 4, "epoch": 0.4, "values": {"loss": 0.04}}]
        r = await client.post(f"/v1/jobs/{job_id}/batches", json=body, headers=headers_for(migrated, job_id))
        assert r.json() == {"accepted_points": 7, "accepted_predictions": 0, "duplicate": False}
        _, live = await recorder.wait_for(lambda m: m[0] == subjects.job_metrics(job_id))
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)
    rows = await pool.fetch("SELECT name, step, value, recorded_at FROM metric_points WHERE job_id = $1 "
                            "ORDER BY name, step", job_id)
    assert [(r["name"], r["step"], r["value"]) for r in rows] == [
        ("loss", 1, 0.1), ("loss", 2, 0.2), ("loss", 3, 0.3), ("loss", 4, 0.04),
        ("lr", 1, 0.01), ("lr", 2, 0.02), ("lr", 3, 0.03)]
    assert {r["recorded_at"].isoformat() for r in rows if r["step"] < 4} == {"2025-01-01T00:00:00+00:00"}
    assert [(m["step"], m["values"]) for m in live["metrics"]] == [
        (1, {"loss": 0.1, "lr": 0.01}), (2, {"loss": 0.2, "lr": 0.02}), (3, {"loss": 0.3, "lr": 0.03}),
        (4, {"loss": 0.04})]
    assert live["job_id"] == job_id and live["event_id"] and live["metrics"][0]["epoch"] == 0.1


async def test_replayed_and_duplicated_batches_leave_one_row_per_point(migrated, pool):
    job_id = str(uuid.uuid4())
    headers = headers_for(migrated, job_id)
    ctx, client = await client_for(migrated)
    try:
        first = compact(steps=range(0, 2000))
        overlapping = [compact(steps=range(start, start + 2000)) for start in range(0, 6000, 1000)]
        posts = [first] * 5 + overlapping + overlapping  # replays of one id, and new ids over the same points

        async def post(body):
            r = await client.post(f"/v1/jobs/{job_id}/batches", json=body, headers=headers)
            assert r.status_code == 200, r.text
            return r.json()

        acks = await asyncio.gather(*(post(b) for b in posts))
        # Another job may use the same batch id: ids are unique per job.
        other = str(uuid.uuid4())
        r = await client.post(f"/v1/jobs/{other}/batches", json=first, headers=headers_for(migrated, other))
        assert r.json()["duplicate"] is False
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)
    assert sum(not a["duplicate"] for a in acks) == 1 + len(overlapping)
    rows = await pool.fetch("SELECT name, step FROM metric_points WHERE job_id = $1", job_id)
    assert len(rows) == len({(r["name"], r["step"]) for r in rows}) == 2 * 7000
    assert await pool.fetchval("SELECT count(*) FROM ingest_batches WHERE job_id = $1", job_id) == 7


async def test_bad_compact_batches_get_422_naming_the_field(migrated, pool):
    job_id = str(uuid.uuid4())
    ctx, client = await client_for(migrated)
    try:
        cases = [
            ({"series": [{"name": "loss", "steps": [1, 2], "values": [1.0]}]}, "series.0.values"),
            ({"series": [{"name": "loss", "steps": [-1], "values": [1.0]}]}, "series.0.steps.0"),
            ({"series": [{"name": "loss", "steps": [2**31], "values": [1.0]}]}, "series.0.steps.0"),
            ({"series": [{"name": "", "steps": [1], "values": [1.0]}]}, "series.0.name"),
            ({"series": [{"name": "loss", "steps": [1], "values": [1.0], "epoch": [1]}]}, "series.0.epoch"),
            ({"metrics": [{"step": 1, "values": {"loss": 1e999}}]}, "metrics.0.values.loss"),
            ({"metrics": [{"step": 2**40, "values": {"loss": 1}}]}, "metrics.0.step"),
            ({"predictions": [{"step": 1, "sample_index": 0, "prompt": "p", "generated": "g", "expected": "e",
                               "scores": {"bleu": 1e999}}]}, "predictions.0.scores.bleu"),
        ]
        for extra, field in cases:
            body = {"batch_id": str(uuid.uuid4()), **extra}
            raw = json.dumps(body)
            r = await client.post(f"/v1/jobs/{job_id}/batches", content=raw, headers=headers_for(migrated, job_id))
            assert r.status_code == 422, (field, r.text)
            assert r.json()["detail"]["field"] == field, r.json()
        r = await client.post(f"/v1/jobs/{job_id}/batches", content=b"{not json", headers=headers_for(migrated, job_id))
        assert r.status_code == 422 and r.json()["detail"]["code"] == "validation_failed"
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)
    assert await point_count(pool, job_id) == 0


async def test_too_large_batches_get_413_and_store_nothing(migrated, pool):
    job_id = str(uuid.uuid4())
    headers = headers_for(migrated, job_id)
    config = IngestConfig(max_batch_points=100, max_batch_predictions=2, max_batch_bytes=64 * 1024)
    ctx, client = await client_for(migrated, config)
    try:
        r = await client.post(f"/v1/jobs/{job_id}/batches", json=compact(steps=range(51)), headers=headers)
        assert r.status_code == 413
        detail = r.json()["detail"]
        assert detail["code"] == "payload_too_large" and detail["field"] == "metrics"
        assert "102 metric values" in detail["message"] and "100" in detail["message"]
        r = await client.post(f"/v1/jobs/{job_id}/batches", json=batch(predictions=(0, 1, 2)), headers=headers)
        assert r.status_code == 413 and r.json()["detail"]["field"] == "predictions"

        async def chunked():
            for _ in range(80):
                yield b" " * 1024

        r = await client.post(f"/v1/jobs/{job_id}/batches", content=chunked(), headers=headers)
        assert r.status_code == 413 and r.json()["detail"]["field"] == "body"  # no Content-Length: counted
        r = await client.post(f"/v1/jobs/{job_id}/batches", json=compact(steps=range(50)), headers=headers)
        assert r.status_code == 200
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)
    assert await point_count(pool, job_id) == 100


async def test_a_job_sending_too_fast_gets_429_with_retry_after(migrated, pool):
    job_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    config = IngestConfig(job_points_per_second=100, job_burst_points=100)
    ctx, client = await client_for(migrated, config)
    try:
        url = f"/v1/jobs/{job_id}/batches"
        r = await client.post(url, json=compact(steps=range(150)), headers=headers_for(migrated, job_id))
        assert r.status_code == 200  # a full bucket takes one batch larger than itself ...
        r = await client.post(url, json=compact(steps=range(150, 160)), headers=headers_for(migrated, job_id))
        assert r.status_code == 429  # ... and the job then waits for the debt to be paid
        assert 1 <= int(r.headers["Retry-After"]) <= 3
        assert r.json()["detail"]["code"] == "too_many_requests" and "again in" in r.json()["detail"]["message"]
        r = await client.post(f"/v1/jobs/{other}/batches", json=compact(), headers=headers_for(migrated, other))
        assert r.status_code == 200  # other jobs are not held up
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)
    assert await point_count(pool, job_id) == 300


async def test_a_busy_process_answers_429_before_reading_the_body(migrated, pool):
    job_id = str(uuid.uuid4())
    app = create_app(migrated, IngestConfig(max_in_flight=1))
    url, headers = f"/v1/jobs/{job_id}/batches", headers_for(migrated, job_id)
    body_may_end = asyncio.Event()

    async def slow_body():
        yield b'{"batch_id": "slow", '
        await body_may_end.wait()
        yield json.dumps({"series": compact()["series"]})[1:].encode()  # the rest: "series": [...]}

    async with app.router.lifespan_context(app), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
        slow = asyncio.create_task(client.post(url, content=slow_body(), headers=headers))
        while app.state.throttle.in_flight == 0:
            await asyncio.sleep(0.01)
        r = await client.post(url, json=compact(), headers=headers)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        body_may_end.set()
        assert (await slow).status_code == 200
        assert (await client.post(url, json=compact(), headers=headers)).status_code == 200
    assert await point_count(pool, job_id) == 6


def test_throttle_refills_and_caps_requests_in_flight():
    now = [0.0]
    throttle = Throttle(points_per_second=1000, burst_points=2000, max_in_flight=2, clock=lambda: now[0])
    assert throttle.retry_after("a") is None
    throttle.take("a", 5000)  # 3000 in debt
    assert throttle.retry_after("a") == 3
    now[0] = 2.5
    assert throttle.retry_after("a") == 1
    now[0] = 3.0
    assert throttle.retry_after("a") is None
    with throttle.slot(), throttle.slot():
        assert throttle.retry_after("b") == 1
    assert throttle.retry_after("b") is None


async def test_the_trainer_reporter_honours_413_and_429_and_loses_nothing(migrated, pool, tmp_path, caplog):
    from trainer.reporter import MetricsReporter

    caplog.set_level(logging.DEBUG, logger="trainer.reporter")
    job_id = str(uuid.uuid4())
    # slow enough that even a loaded machine sends faster than the job may: the 429s are certain (about 19 s)
    config = IngestConfig(max_batch_points=60, job_points_per_second=100, job_burst_points=120)
    app = create_app(migrated, config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=migrated.ingest_port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        reporter = MetricsReporter(migrated.ingest_url, job_id, job_token(migrated.require_secret_key(), job_id),
                                   str(tmp_path / "spool.jsonl"), flush_interval=0.05, max_batch=100)
        for step in range(1, 1001):
            reporter.log_metrics(step, step / 1000, {"loss": 1 / step, "learning_rate": 1e-4})
        assert await asyncio.to_thread(reporter.close, 60)
    finally:
        server.should_exit = True
        await task
    rows = await pool.fetch("SELECT name, step FROM metric_points WHERE job_id = $1", job_id)
    assert len(rows) == len({(r["name"], r["step"]) for r in rows}) == 2000
    said = caplog.text
    assert "too large (413): split in two" in said and "HTTP 429" in said


async def test_copy_encoding_round_trips_every_column_layout(migrated, pool):
    job_id = str(uuid.uuid4())
    ctx, client = await client_for(migrated)
    try:
        body = {"batch_id": "layouts", "recorded_at": "2024-02-29T23:59:59.999999+05:30", "series": [
            {"name": "aligned", "steps": [0, 1, 2**31 - 1], "values": [-1.5e300, 0.0, 5e-324], "epochs": [0, 0.5, 1e9]},
            {"name": "some epochs", "steps": [1, 2, 3], "values": [1, 2, 3], "epochs": [None, 0.25, None]},
            {"name": "τιμή ✓", "steps": [7, 8], "values": [7, 8],
             "recorded_at": ["2025-06-01T12:00:00", "2025-06-01T12:00:00.000001+00:00"]}]}
        r = await client.post(f"/v1/jobs/{job_id}/batches", json=body, headers=headers_for(migrated, job_id))
        assert r.status_code == 200, r.text
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)
    rows = await pool.fetch("SELECT name, step, epoch, value, recorded_at FROM metric_points WHERE job_id = $1 "
                            "ORDER BY name, step", job_id)
    batch_time = datetime.fromisoformat("2024-02-29T23:59:59.999999+05:30")
    assert [tuple(r) for r in rows] == [
        ("aligned", 0, 0.0, -1.5e300, batch_time), ("aligned", 1, 0.5, 0.0, batch_time),
        ("aligned", 2**31 - 1, 1e9, 5e-324, batch_time),
        ("some epochs", 1, None, 1.0, batch_time), ("some epochs", 2, 0.25, 2.0, batch_time),
        ("some epochs", 3, None, 3.0, batch_time),
        ("τιμή ✓", 7, None, 7.0, datetime(2025, 6, 1, 12, tzinfo=UTC)),
        ("τιμή ✓", 8, None, 8.0, datetime(2025, 6, 1, 12, 0, 0, 1, tzinfo=UTC))]

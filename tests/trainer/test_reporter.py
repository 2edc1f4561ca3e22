from __future__ import annotations

import json
import logging
import os
import threading
import uuid

import pytest

from trainer.reporter import MetricsReporter, _retry_after, clean_values

JOB = "0b5a4b8e-0000-4000-8000-00000000abcd"
TOKEN = "s3cret-ingest-token-0123456789"


def _reporter(url, spool, **kwargs) -> MetricsReporter:
    kwargs.setdefault("flush_interval", 0.05)
    return MetricsReporter(url, JOB, TOKEN, str(spool), **kwargs)


def _log(reporter: MetricsReporter, steps: range, predictions: bool = False) -> None:
    for step in steps:
        reporter.log_metrics(step, step / 10, {"loss": 10.0 - step / 10, "learning_rate": 1e-3})
        if predictions:
            reporter.log_prediction(step, step / 10, 0, f"prompt {step}", f"gen {step}", f"exp {step}")


def _spooled(path) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_batches_arrive_with_the_protocol(collector, tmp_path):
    spool = tmp_path / "spool.jsonl"
    reporter = _reporter(collector.url, spool)
    _log(reporter, range(1, 11), predictions=True)
    assert reporter.close(timeout=10)

    assert sorted(m["step"] for m in collector.metrics()) == list(range(1, 11))
    assert sorted(p["step"] for p in collector.predictions()) == list(range(1, 11))
    assert set(collector.paths) == {f"/v1/jobs/{JOB}/batches"}
    assert set(collector.authorizations) == {f"Bearer {TOKEN}"}
    batch = next(iter(collector.batches.values()))
    assert set(batch) == {"batch_id", "attempt", "metrics", "predictions"} and batch["attempt"] == 1
    assert uuid.UUID(batch["batch_id"]).version == 4
    metric = collector.metrics()[0]
    assert set(metric) == {"step", "epoch", "values", "recorded_at"}
    assert metric["values"] == {"loss": 10.0 - metric["step"] / 10, "learning_rate": 1e-3}
    assert metric["recorded_at"].endswith("+00:00")
    assert set(collector.predictions()[0]) == {
        "step", "epoch", "sample_index", "prompt", "generated", "expected", "scores"
    }
    assert collector.predictions()[0]["scores"] == {}
    assert _spooled(spool) == []


def test_prediction_scores_travel_with_the_record(collector, tmp_path):
    reporter = _reporter(collector.url, tmp_path / "spool.jsonl")
    reporter.log_prediction(3, 0.5, 1, "p", "Lima", "Lima", {"bleu": 100.0, "rouge_l": 1.0, "bad": float("nan")})
    assert reporter.close(timeout=10)
    assert collector.predictions()[0]["scores"] == {"bleu": 100.0, "rouge_l": 1.0}


def test_batches_hold_at_most_max_batch_records(collector, tmp_path):
    reporter = _reporter(collector.url, tmp_path / "spool.jsonl", max_batch=3, flush_interval=60)
    _log(reporter, range(10), predictions=True)
    assert reporter.close(timeout=10)
    sizes = [len(b["metrics"]) + len(b["predictions"]) for b in collector.batches.values()]
    assert sum(sizes) == 20 and max(sizes) <= 3


def test_flush_sends_without_closing(collector, tmp_path):
    reporter = _reporter(collector.url, tmp_path / "spool.jsonl", flush_interval=60)
    _log(reporter, range(3))
    assert reporter.flush(timeout=10)
    assert len(collector.metrics()) == 3
    reporter.close(timeout=5)


def test_concurrent_producers_lose_nothing(collector, tmp_path):
    reporter = _reporter(collector.url, tmp_path / "spool.jsonl", flush_interval=0.001, max_batch=7)
    threads = [threading.Thread(target=_log, args=(reporter, range(t * 1000, t * 1000 + 300))) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reporter.close(timeout=30)
    steps = sorted(m["step"] for m in collector.metrics())
    assert steps == sorted(t * 1000 + i for t in range(4) for i in range(300))


def test_503_then_recovery_delivers_every_record_exactly_once(collector, tmp_path):
    spool = tmp_path / "spool.jsonl"
    collector.script = [503, 503, (503, {"Retry-After": "0"})]
    reporter = _reporter(collector.url, spool)
    _log(reporter, range(0, 5), predictions=True)
    assert collector.wait_for(lambda: len(collector.attempts) >= 1)
    _log(reporter, range(5, 12), predictions=True)
    assert reporter.close(timeout=30)

    assert sorted(m["step"] for m in collector.metrics()) == list(range(12))
    assert sorted(p["step"] for p in collector.predictions()) == list(range(12))
    failed_ids = [batch_id for batch_id, status in collector.attempts if status == 503]
    assert failed_ids and set(failed_ids) <= set(collector.batches)  # the same batch ids were replayed
    assert _spooled(spool) == []


def test_429_honours_retry_after_and_delivers(collector, tmp_path):
    collector.script = [(429, {"Retry-After": "1"})]
    reporter = _reporter(collector.url, tmp_path / "spool.jsonl", flush_interval=60)
    _log(reporter, range(4))
    assert reporter.close(timeout=30)
    assert sorted(m["step"] for m in collector.metrics()) == list(range(4))
    assert [status for _, status in collector.attempts] == [429, 200]


def test_nothing_is_lost_when_ingest_is_down_during_close(collector, dead_url, tmp_path):
    spool = tmp_path / "spool.jsonl"
    first = _reporter(dead_url, spool)
    _log(first, range(20), predictions=True)
    assert not first.close(timeout=1)
    spooled = _spooled(spool)
    assert sorted(m["step"] for b in spooled for m in b["metrics"]) == list(range(20))
    assert sorted(p["step"] for b in spooled for p in b["predictions"]) == list(range(20))

    second = _reporter(collector.url, spool)
    second.log_metrics(99, None, {"loss": 0.5})
    assert second.close(timeout=10)
    assert sorted(m["step"] for m in collector.metrics()) == [*range(20), 99]
    assert len(collector.predictions()) == 20
    assert set(collector.batches) >= {b["batch_id"] for b in spooled}
    assert collector.attempts[0][0] == spooled[0]["batch_id"]  # oldest first
    assert _spooled(spool) == []


def test_a_resumed_spool_skips_batches_already_acknowledged(collector, tmp_path):
    spool = tmp_path / "spool.jsonl"
    lines = [{"batch_id": str(uuid.uuid4()), "metrics": [{"step": i, "epoch": None, "values": {"loss": 1.0},
                                                          "recorded_at": None}], "predictions": []}
             for i in range(3)]
    spool.write_text("".join(json.dumps(b) + "\n" for b in lines) + '{"truncated')
    (tmp_path / "spool.jsonl.acked").write_text(lines[0]["batch_id"] + "\n")
    reporter = _reporter(collector.url, spool)
    assert reporter.close(timeout=10)
    assert [batch_id for batch_id, _ in collector.attempts] == [lines[1]["batch_id"], lines[2]["batch_id"]]
    assert not spool.exists() and not (tmp_path / "spool.jsonl.acked").exists()


def test_without_ingest_url_everything_is_spooled(tmp_path):
    spool = tmp_path / "spool.jsonl"
    reporter = MetricsReporter(None, JOB, None, str(spool), flush_interval=0.05)
    _log(reporter, range(5), predictions=True)
    assert not reporter.close(timeout=5)
    spooled = _spooled(spool)
    assert sum(len(b["metrics"]) for b in spooled) == 5
    assert sum(len(b["predictions"]) for b in spooled) == 5


def test_401_keeps_the_batch_and_never_logs_the_token(collector, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    collector.respond = lambda body: 401
    spool = tmp_path / "spool.jsonl"
    reporter = _reporter(collector.url, spool)
    _log(reporter, range(3))
    assert collector.wait_for(lambda: len(collector.attempts) >= 1)
    assert not reporter.close(timeout=1)

    assert collector.batches == {}
    assert sum(len(b["metrics"]) for b in _spooled(spool)) == 3
    assert "401" in caplog.text
    assert TOKEN not in caplog.text
    assert TOKEN not in spool.read_text()


def test_422_is_kept_in_the_spool_and_later_batches_still_flow(collector, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    spool = tmp_path / "spool.jsonl"
    collector.script = [422]
    reporter = _reporter(collector.url, spool, flush_interval=60)
    reporter.log_metrics(1, None, {"loss": 1.0})
    reporter.flush(timeout=10)
    reporter.log_metrics(2, None, {"loss": 0.9})
    assert not reporter.close(timeout=10)

    assert [m["step"] for m in collector.metrics()] == [2]
    assert [m["step"] for b in _spooled(spool) for m in b["metrics"]] == [1]
    assert "422" in caplog.text and TOKEN not in caplog.text


def test_413_splits_the_batch(collector, tmp_path):
    collector.respond = lambda body: 413 if len(body["metrics"]) + len(body["predictions"]) > 2 else 200
    reporter = _reporter(collector.url, tmp_path / "spool.jsonl", flush_interval=60)
    _log(reporter, range(7))
    assert reporter.close(timeout=10)
    assert sorted(m["step"] for m in collector.metrics()) == list(range(7))


def test_non_finite_and_non_numeric_values_are_dropped():
    assert clean_values({"loss": 1, "nan": float("nan"), "inf": float("inf"), "flag": True, "s": "x"}) == {
        "loss": 1.0
    }


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("", None), ("3", 3.0), ("0.5", 0.5), ("-2", 0.0), ("99999", 300.0), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
def test_retry_after_parsing(header, expected):
    assert _retry_after(header) == expected


def test_what_the_reporter_sends_is_the_shared_ingest_contract(collector, tmp_path):
    """Every batch the reporter posts validates as ``shared.ingest_batch.BatchIn``, the model ingest reads it with,
    and carries no field that model does not know (ingest would drop it silently)."""
    from shared.events import MetricPoint, PredictionRecord
    from shared.ingest_batch import BatchIn

    reporter = _reporter(collector.url, tmp_path / "spool.jsonl", attempt=2)
    _log(reporter, range(1, 6), predictions=True)
    reporter.log_prediction(6, 0.6, 1, "p", "g", "e", {"bleu": 1.0, "rouge_l": 0.5})
    assert reporter.close(timeout=10)
    assert collector.batches
    for batch in collector.batches.values():
        parsed = BatchIn.model_validate(batch)
        assert set(batch) <= set(BatchIn.model_fields)
        for metric in batch["metrics"]:
            assert set(metric) <= set(MetricPoint.model_fields)
        for prediction in batch["predictions"]:
            assert set(prediction) <= set(PredictionRecord.model_fields)
        assert parsed.attempt == 2
    assert sum(len(b["predictions"]) for b in collector.batches.values()) == 6

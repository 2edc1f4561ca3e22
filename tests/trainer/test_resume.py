"""A stopped job resumes from its checkpoint: optimizer and scheduler state carry on, metric steps continue."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from trainer import artifacts
from trainer.train import resume_checkpoint, run

BASE_LR = 0.01
MAX_STEPS = 10


def _train_records(spec) -> list[dict]:
    path = Path(spec.output_dir) / "metrics-spool.jsonl"
    batches = [json.loads(line) for line in path.read_text().splitlines()]
    return [m for b in batches for m in b["metrics"] if "loss" in m["values"]]


def test_a_stopped_job_resumes_where_it_stopped(make_spec, tmp_path):
    training = {"max_steps": MAX_STEPS, "batch_size": 4, "learning_rate": BASE_LR, "save_steps": 3}
    first = make_spec(rows=48, training=training, predictions={"enabled": False})
    stop = threading.Event()

    def stop_after_step_4(line: str) -> None:
        if line.startswith("[trainer] train step=4/"):
            stop.set()

    interrupted = run(first, stop_event=stop, printer=stop_after_step_4)
    assert interrupted.status == "interrupted" and interrupted.global_step == 5
    checkpoint = interrupted.checkpoint_path
    assert checkpoint == os.path.join(first.output_dir, "checkpoints", "checkpoint-5")
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json"} <= set(os.listdir(checkpoint))

    second = first.model_copy(update={"attempt": 2, "output_dir": str(tmp_path / "attempt-2"),
                                      "resume_from_checkpoint": checkpoint})
    printed: list[str] = []
    resumed = run(second, printer=printed.append)
    assert resumed.status == "completed" and resumed.global_step == MAX_STEPS
    assert f"[trainer] resuming from {checkpoint}" in printed

    records = _train_records(first) + _train_records(second)
    assert [m["step"] for m in records] == list(range(1, MAX_STEPS + 1))
    assert [m["step"] for m in _train_records(second)] == list(range(6, MAX_STEPS + 1))
    # The linear schedule continues where it was: the scheduler state came back with the checkpoint.
    for m in records:
        assert m["values"]["learning_rate"] == pytest.approx(BASE_LR * (1 - (m["step"] - 1) / MAX_STEPS))
    epochs = [m["epoch"] for m in records]
    assert epochs == sorted(epochs)


def test_latest_finds_the_newest_checkpoint(make_spec, tmp_path):
    spec = make_spec(spec={"resume_from_checkpoint": "latest"})
    assert resume_checkpoint(spec) is None
    folder = Path(spec.output_dir) / "checkpoints"
    for step in (3, 12, 9):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (folder / "checkpoint-15").mkdir()  # being written: no trainer state yet
    assert resume_checkpoint(spec) == str(folder / "checkpoint-12")
    assert artifacts.latest_checkpoint(str(tmp_path / "nowhere")) is None
    explicit = spec.model_copy(update={"resume_from_checkpoint": str(folder / "checkpoint-3")})
    assert resume_checkpoint(explicit) == str(folder / "checkpoint-3")

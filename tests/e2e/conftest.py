"""The end-to-end tests' helpers; the stack and the emulated clouds are session fixtures of ``tests.cloudstack``."""

from __future__ import annotations

import time
from pathlib import Path

from tests.cloudstack import (
    HF_TOKEN,
    HF_USER,
    KAGGLE_KEY,
    KAGGLE_USER,
    LAMBDA_KEY,
    PROVISIONING_TIMEOUT_S,
    RUNPOD_KEY,
    TERMINAL,
    EmulatorServer,
    RunningStack,
    collect_events,
    wait_for_status,
)

__all__ = ["HF_TOKEN", "HF_USER", "KAGGLE_KEY", "KAGGLE_USER", "LAMBDA_KEY", "PROVISIONING_TIMEOUT_S", "RUNPOD_KEY",
           "TERMINAL", "EmulatorServer", "RunningStack", "collect_events", "wait_for_status"]


def wait_until(predicate, timeout=60.0, what="condition"):
    """``predicate()`` once it is true (its value), polled every 0.2 s; an assertion error after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)
    return value


def cloud_job_config(client, folder: Path, name: str, base_model: str, *, max_steps: int = 8) -> dict:
    """A small SFT job of the cloud suites: 32 rows uploaded as the client's data set, LoRA on every linear layer,
    a metric each step and one prediction at the last."""
    from trainer.tiny_model import write_sample_dataset

    data = write_sample_dataset(str(folder / "data.jsonl"), rows=32, fmt="instruction")
    dataset = client.post("/api/training/datasets", files={"file": ("d.jsonl", Path(data).read_bytes())}).json()
    return {"name": name, "model": {"base_model": base_model, "max_seq_length": 64},
            "data": {"dataset_id": dataset["id"], "eval_split": 0.2},
            "training": {"max_steps": max_steps, "batch_size": 4, "logging_steps": 1, "eval_steps": max_steps,
                         "lora": {"target_modules": "all-linear"}},
            "predictions": {"sample_count": 1, "frequency": "eval", "max_new_tokens": 4, "temperature": 0}}

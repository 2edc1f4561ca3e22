"""Failures become result.json entries a person can act on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import trainer.__main__ as cli
from shared.dataformats import DatasetError
from shared.jobspec import JobSpec
from trainer import train
from trainer.errors import ConfigRefused, describe_failure

KNOBS = ("training.batch_size", "training.gradient_accumulation_steps", "model.max_seq_length",
         "training.gradient_checkpointing", "training.quantization.bits", "training.lora.r")


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.15 GiB total capacity)"),
    MemoryError(),
])
def test_out_of_memory_says_which_knobs_to_turn(error):
    error_type, message, field = describe_failure(error)
    assert error_type == "OutOfMemoryError" and field is None
    assert message.startswith("out of memory:") and all(knob in message for knob in KNOBS)

pytestmark = pytest.mark.usefixtures("restore_signals")


def test_other_failures():
    assert describe_failure(ConfigRefused("training.fp16", "training.fp16=true needs ...")) == (
        "ConfigRefused", "training.fp16=true needs ...", "training.fp16"
    )
    error_type, message, field = describe_failure(DatasetError([(3, "not valid JSON")]))
    assert (error_type, field) == ("DatasetError", "data") and "line 3: not valid JSON" in message
    assert describe_failure(KeyError("x")) == ("KeyError", "'x'", None)


def test_an_out_of_memory_job_leaves_the_advice_in_result_json(write_spec, monkeypatch):
    spec_path = write_spec()

    def out_of_memory(spec, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    monkeypatch.setattr(train, "run", out_of_memory)
    assert cli.main(["--spec", str(spec_path)]) == 1
    out = Path(JobSpec.read(str(spec_path)).output_dir)
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and result["error_type"] == "OutOfMemoryError"
    assert "training.gradient_checkpointing=true" in result["error_message"]
    assert "Tried to allocate 4.00 GiB" in result["error_message"] and "OutOfMemoryError" in result["traceback"]


def test_the_judge_key_is_kept_out_of_result_json(write_spec, monkeypatch):
    monkeypatch.setenv("TF_JUDGE_KEY", "sk-judge-0123456789")
    spec_path = write_spec(fmt="chat", training={"method": "rlhf", "rlhf": {
        "judge_url": "http://127.0.0.1:9/v1", "judge_model": "m", "judge_api_key_env": "TF_JUDGE_KEY"}})

    def leaky(spec, **kwargs):
        raise RuntimeError("the judge said: bad key sk-judge-0123456789")

    monkeypatch.setattr(train, "run", leaky)
    assert cli.main(["--spec", str(spec_path)]) == 1
    text = (Path(JobSpec.read(str(spec_path)).output_dir) / "result.json").read_text()
    assert "sk-judge-0123456789" not in text and "bad key ***" in text

"""``training.gpu_count`` > 1 re-executes the trainer under ``accelerate launch``, one process per GPU."""

from __future__ import annotations

import json
import sys

import pytest

import trainer.__main__ as cli
from shared.jobspec import JobSpec, TrainerResult
from trainer import launch, validate
from trainer.launch import build_launch_command

pytestmark = pytest.mark.usefixtures("restore_signals")


def test_the_launch_command_is_an_argv_list():
    spec_path = "/jobs/a b/spec.json; rm -rf ~"
    command = build_launch_command(spec_path, 4, python="/venv/bin/python")
    assert command == [
        "/venv/bin/python", "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
        "--num_processes", "4", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "trainer", "--spec", spec_path,
    ]
    bf16 = build_launch_command("s.json", 2, mixed_precision="bf16", main_process_port=29600)
    assert bf16[0] == sys.executable
    assert bf16[bf16.index("--mixed_precision") + 1] == "bf16"
    assert bf16[bf16.index("--main_process_port") + 1] == "29600"
    with pytest.raises(ValueError, match="2 or more"):
        build_launch_command("s.json", 1)


def _result(spec_path) -> TrainerResult:
    out = JobSpec.read(str(spec_path)).output_dir
    with open(f"{out}/result.json", encoding="utf-8") as f:
        return TrainerResult.model_validate(json.load(f))


def test_several_gpus_relaunch_through_accelerate(write_spec, monkeypatch):
    spec_path = write_spec(training={"gpu_count": 2, "bf16": True})
    launched: list[list[str]] = []

    def fake_run(command):
        launched.append(command)
        spec = JobSpec.read(str(spec_path))
        with open(f"{spec.output_dir}/result.json", "w", encoding="utf-8") as f:
            f.write(TrainerResult(status="completed", global_step=7).model_dump_json())
        return 0

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(validate, "check_spec", lambda spec: None)
    monkeypatch.setattr(launch, "run_launched", fake_run)
    assert cli.main(["--spec", str(spec_path)]) == 0
    assert launched == [build_launch_command(str(spec_path), 2, mixed_precision="bf16")]
    assert _result(spec_path).global_step == 7


def test_a_launch_that_leaves_no_result_is_reported(write_spec, monkeypatch):
    spec_path = write_spec(training={"gpu_count": 2})
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(validate, "check_spec", lambda spec: None)
    monkeypatch.setattr(launch, "run_launched", lambda command: -9)
    assert cli.main(["--spec", str(spec_path)]) == 1
    result = _result(spec_path)
    assert result.error_type == "LaunchFailed" and "exited with code -9" in result.error_message


def test_more_gpus_than_the_machine_has_are_refused_before_launch(write_spec, monkeypatch):
    spec_path = write_spec(training={"gpu_count": 2})
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(launch, "run_launched", lambda command: pytest.fail("launched"))
    assert cli.main(["--spec", str(spec_path)]) == 1
    result = _result(spec_path)
    assert (result.error_type, result.error_field) == ("ConfigRefused", "training.gpu_count")

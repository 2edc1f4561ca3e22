import pytest
from pydantic import ValidationError

from shared.config import DataFormat, Method, TrainingConfig
from shared.jobspec import JobSpec

BASE = {"model": {"base_model": "some/model"}, "data": {"dataset_id": "d1"}}


def _errors(payload: dict) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        TrainingConfig.model_validate(payload)
    return info.value.errors()


def test_defaults_fill_every_section():
    config = TrainingConfig.model_validate(BASE)
    assert config.training.method is Method.SFT
    assert config.training.lora.enabled and config.training.lora.r == 16
    assert config.training.quantization.bits is None
    assert config.predictions.frequency == "epoch"


def test_data_may_be_named_later_but_never_twice():
    assert not TrainingConfig.model_validate({"model": {"base_model": "m"}}).data.has_source  # a deploy names it
    errs = _errors({"model": {"base_model": "m"}, "data": {"dataset_id": "a", "train_path": "/x"}})
    assert "only one" in errs[0]["msg"]


def test_out_of_range_values_name_their_field():
    errs = _errors({**BASE, "training": {"lora": {"r": 0}}})
    assert errs[0]["loc"] == ("training", "lora", "r")
    errs = _errors({**BASE, "training": {"learning_rate": -1}})
    assert errs[0]["loc"] == ("training", "learning_rate")


def test_unknown_fields_are_refused():
    errs = _errors({**BASE, "training": {"learnin_rate": 0.1}})
    assert errs[0]["loc"] == ("training", "learnin_rate")
    assert errs[0]["type"] == "extra_forbidden"


def test_cross_field_rules_say_the_fix():
    msg = _errors({**BASE, "training": {"bf16": True, "fp16": True}})[0]["msg"]
    assert "choose one" in msg
    msg = _errors({**BASE, "training": {"quantization": {"bits": 4}, "lora": {"enabled": False}}})[0]["msg"]
    assert "training.lora.enabled" in msg
    msg = _errors({**BASE, "predictions": {"frequency": "steps"}})[0]["msg"]
    assert "predictions.step_interval" in msg


def test_jobspec_round_trips_through_json(tmp_path):
    spec = JobSpec(job_id="j1", config=TrainingConfig.model_validate(BASE), dataset_path="/d.jsonl",
                   dataset_format=DataFormat.CHAT, output_dir="/out", ingest_url="http://x", ingest_token="t")
    path = tmp_path / "spec.json"
    path.write_text(spec.model_dump_json())
    assert JobSpec.read(str(path)) == spec


def test_nul_characters_are_refused_with_their_path():
    msg = _errors({"model": {"base_model": "a\x00b"}, "data": {"dataset_id": "d"}})[0]["msg"]
    assert "model.base_model contains a NUL character" in msg

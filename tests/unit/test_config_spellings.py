"""The specification's spellings of a configuration are accepted as written, stored in TuneFleet's names, and a
setting written in two spellings is refused naming both."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from shared.config import TrainingConfig
from tests.document import LARGE, SMALL


def message(payload: dict) -> str:
    with pytest.raises(ValidationError) as info:
        TrainingConfig.model_validate(payload)
    return str(info.value)


def test_the_documents_default_configurations_are_accepted_as_written():
    small, large = TrainingConfig.model_validate(SMALL), TrainingConfig.model_validate(LARGE)
    assert small.model.base_model == "Qwen/Qwen2.5-0.5B" and small.training.epochs == 3
    assert (small.training.lora.r, small.training.lora.alpha) == (8, 16)
    assert small.predictions.frequency == "epoch" and small.predictions.sample_count == 5
    assert large.training.quantization.bits == 4 and large.training.quantization.quant_type == "nf4"
    assert (large.training.lora.r, large.training.lora.alpha, large.training.epochs) == (64, 128, 2)
    assert large.predictions.frequency == "eval"
    stored = large.model_dump(mode="json")  # stored in TuneFleet's names, and reads back the same
    assert "lora_r" not in stored["training"] and stored["training"]["lora"]["r"] == 64
    assert TrainingConfig.model_validate(stored) == large


def test_the_interfaces_every_field_is_honoured():
    config = TrainingConfig.model_validate({
        "id": "c1", "user_id": "u1", "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
        "name": "all", "model": {"name": "org/m", "device_map": "cpu", "torch_dtype": "bfloat16"},
        "data": {"train_path": "/data/x.jsonl", "eval_split": 0.2, "max_samples": 100},
        "training": {"method": "dpo", "num_epochs": 1, "learning_rate": 1e-4, "batch_size": 2,
                     "gradient_accumulation_steps": 8, "max_steps": 50, "warmup_steps": 5, "weight_decay": 0.01,
                     "optim": "paged_adamw_32bit", "gradient_checkpointing": True, "bf16": True, "fp16": False,
                     "lora_config": {"r": 32, "lora_alpha": 64, "lora_dropout": 0.1, "target_modules": ["q_proj"],
                                     "bias": "none", "task_type": "CAUSAL_LM"},
                     "quantization": {"load_in_8bit": True}},
        "predictions": {"enabled": True, "sample_count": 2, "sample_frequency": "steps", "step_interval": 10,
                        "max_new_tokens": 16, "temperature": 0.5, "top_p": 0.8}})
    assert (config.model.base_model, config.model.device_map, config.model.torch_dtype) == ("org/m", "cpu",
                                                                                             "bfloat16")
    assert config.training.optimizer == "paged_adamw_32bit" and config.training.quantization.bits == 8
    lora = config.training.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (32, 64, 0.1, ["q_proj"])
    assert config.predictions.frequency == "steps" and config.predictions.step_interval == 10


def test_bitsandbytes_names_reach_the_quantization_section():
    q = TrainingConfig.model_validate({"model": "m", "training": {"quantization": {
        "load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_compute_dtype": "float16",
        "bnb_4bit_use_double_quant": False}}}).training.quantization
    assert (q.bits, q.quant_type, q.compute_dtype, q.double_quant) == (4, "fp4", "float16", False)
    off = TrainingConfig.model_validate({"model": "m", "training": {"quantization": {"load_in_4bit": False}}})
    assert off.training.quantization.bits is None


@pytest.mark.parametrize(("training", "first", "second"), [
    ({"lora_r": 8, "lora": {"r": 4}}, "training.lora.r", "training.lora_r"),
    ({"lora_r": 8, "lora_config": {"r": 4}}, "training.lora_r", "training.lora_config.r"),
    ({"num_epochs": 2, "epochs": 3}, "training.epochs", "training.num_epochs"),
    ({"optim": "sgd", "optimizer": "sgd"}, "training.optimizer", "training.optim"),
    ({"quantization": {"bits": 4, "load_in_4bit": True}}, "training.quantization.bits",
     "training.quantization.load_in_4bit"),
    ({"quantization": {"load_in_4bit": True, "load_in_8bit": True}}, "training.quantization.load_in_4bit",
     "training.quantization.load_in_8bit"),
])
def test_one_setting_in_two_spellings_is_refused_naming_both(training, first, second):
    text = message({"model": "m", "training": training})
    assert f"{first} and {second} are the same setting written twice" in text


def test_model_written_twice_and_unknown_lora_settings_are_refused():
    assert "model.base_model and model.name" in message({"model": {"base_model": "a", "name": "b"}})
    assert "predictions.frequency and predictions.sample_frequency" in message(
        {"model": "m", "predictions": {"frequency": "eval", "sample_frequency": "epoch"}})
    assert "training.lora_config.fan_in_fan_out is not a LoRA setting" in message(
        {"model": "m", "training": {"lora_config": {"fan_in_fan_out": True}}})
    assert "task_type" in message({"model": "m", "training": {"lora_config": {"task_type": "SEQ_CLS"}}})


def test_the_callers_body_is_left_as_it_was():
    body = copy.deepcopy(LARGE)
    TrainingConfig.model_validate(body)
    assert body == LARGE

"""Every configuration that cannot run is refused before any weights load, naming its field and the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config import TrainingConfig
from shared.jobspec import JobSpec
from trainer import validate
from trainer.errors import ConfigRefused
from trainer.validate import Hardware, check_spec

CPU = Hardware(cuda=False, gpus=0, bf16=True)


@pytest.fixture
def spec(tiny_model_dir, tmp_path):
    def make(training: dict | None = None, fmt: str = "instruction", model: dict | None = None,
             data: dict | None = None, predictions: dict | None = None, **fields) -> JobSpec:
        return JobSpec.model_validate({
            "job_id": "j",
            "config": {"model": {"base_model": tiny_model_dir, "max_seq_length": 128, **(model or {})},
                       "data": {"train_path": "d.jsonl", **(data or {})}, "training": training or {},
                       "predictions": predictions or {}},
            "dataset_path": "d.jsonl",
            "dataset_format": fmt,
            "output_dir": str(tmp_path / "out"),
            **fields,
        })

    return make


def refused(spec: JobSpec, hardware: Hardware = CPU) -> ConfigRefused:
    with pytest.raises(ConfigRefused) as info:
        check_spec(spec, hardware=hardware)
    assert info.value.field in info.value.message or info.value.field == "resume_from_checkpoint"
    return info.value


def test_good_configs_pass(spec, tiny_reward_model_dir):
    check_spec(spec(), hardware=CPU)
    check_spec(spec({"bf16": True, "optimizer": "paged_adamw_32bit", "gradient_checkpointing": True,
                     "lora": {"target_modules": ["q_proj", "o_proj", "down_proj"]}}), hardware=CPU)
    check_spec(spec({"quantization": {"bits": 4, "quant_type": "fp4"}}), hardware=CPU)
    check_spec(spec({"method": "dpo"}, fmt="preference"), hardware=CPU)
    check_spec(spec({"method": "rlhf", "rlhf": {"reward_model": tiny_reward_model_dir, "num_generations": 2}},
                    fmt="chat"), hardware=CPU)
    check_spec(spec({"fp16": True, "gpu_count": 2}), hardware=Hardware(cuda=True, gpus=2, bf16=False))


@pytest.mark.parametrize(("method", "fmt", "fix"), [
    ("dpo", "instruction", "upload preference data"),
    ("orpo", "chat", "upload preference data"),
    ("sft", "preference", "training.method='dpo' or 'orpo'"),
    ("rlhf", "text", "chat, instruction or preference data"),
])
def test_methods_need_their_data(spec, method, fmt, fix):
    error = refused(spec({"method": method, "rlhf": {"reward_model": "rm"}}, fmt=fmt))
    assert error.field == "training.method"
    assert f"training.method={method!r} cannot train on {fmt} data" in error.message and fix in error.message


def test_fp16_needs_cuda(spec):
    error = refused(spec({"fp16": True}))
    assert error.field == "training.fp16"
    assert "needs a CUDA GPU" in error.message and "set training.fp16=false" in error.message


def test_bf16_needs_a_gpu_that_has_it(spec):
    error = refused(spec({"bf16": True}), Hardware(cuda=True, gpus=1, bf16=False))
    assert error.field == "training.bf16" and "set training.fp16=true instead" in error.message
    error = refused(spec({"quantization": {"bits": 4}}), Hardware(cuda=True, gpus=1, bf16=False))
    assert error.field == "training.quantization.compute_dtype" and "'float16'" in error.message


def test_quantization_needs_bitsandbytes(spec, monkeypatch):
    monkeypatch.setattr(validate, "bitsandbytes_available", lambda: False)
    error = refused(spec({"quantization": {"bits": 8}}))
    assert error.field == "training.quantization.bits"
    assert "needs the bitsandbytes package" in error.message and "unset training.quantization.bits" in error.message
    error = refused(spec({"optimizer": "paged_adamw_32bit"}), Hardware(cuda=True, gpus=1, bf16=True))
    assert error.field == "training.optimizer" and "'adamw_torch'" in error.message
    check_spec(spec({"optimizer": "paged_adamw_32bit"}), hardware=CPU)


def test_target_modules_the_model_lacks(spec):
    error = refused(spec({"lora": {"target_modules": ["q_proj", "query_key_value"]}}))
    assert error.field == "training.lora.target_modules"
    assert "['query_key_value']" in error.message and "LlamaForCausalLM does not have" in error.message
    assert "'q_proj'" in error.message and "'all-linear'" in error.message
    error = refused(spec({"lora": {"target_modules": ["self_attn"]}}))
    assert "['self_attn'], which are not linear layers" in error.message


def test_rlhf_needs_a_reward_source(spec):
    error = refused(spec({"method": "rlhf"}, fmt="chat"))
    assert error.field == "training.rlhf.reward_model"
    assert "needs a reward source" in error.message and "training.rlhf.judge_url" in error.message


def test_rlhf_generations_must_divide_the_batch(spec):
    error = refused(spec({"method": "rlhf", "batch_size": 4, "rlhf": {"reward_model": "rm", "num_generations": 3}},
                         fmt="chat"))
    assert error.field == "training.rlhf.num_generations" and "[2, 4]" in error.message


def test_rlhf_completions_must_fit(spec):
    error = refused(spec({"method": "rlhf", "rlhf": {"reward_model": "rm", "max_completion_length": 128}},
                         fmt="chat"))
    assert error.field == "training.rlhf.max_completion_length" and "model.max_seq_length=128" in error.message


def test_the_judge_key_must_be_in_the_environment(spec, monkeypatch):
    monkeypatch.delenv("TF_TEST_JUDGE_KEY", raising=False)
    training = {"method": "rlhf", "rlhf": {"judge_url": "http://127.0.0.1:9/v1", "judge_model": "m",
                                           "judge_api_key_env": "TF_TEST_JUDGE_KEY", "num_generations": 2}}
    error = refused(spec(training, fmt="chat"))
    assert error.field == "training.rlhf.judge_api_key_env" and "TF_TEST_JUDGE_KEY" in error.message
    monkeypatch.setenv("TF_TEST_JUDGE_KEY", "sk-secret")
    check_spec(spec(training, fmt="chat"), hardware=CPU)


def test_reward_model_must_load_and_give_one_score(spec, tiny_model_dir, tmp_path):
    from transformers import AutoConfig

    error = refused(spec({"method": "rlhf", "rlhf": {"reward_model": str(tmp_path / "nothing")}}, fmt="chat"))
    assert error.field == "training.rlhf.reward_model" and "cannot be loaded" in error.message
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 3
    config.save_pretrained(tmp_path / "three")
    error = refused(spec({"method": "rlhf", "rlhf": {"reward_model": str(tmp_path / "three")}}, fmt="chat"))
    assert "scores with 3 labels" in error.message


def test_machine_limits(spec):
    error = refused(spec({"gpu_count": 2}))
    assert error.field == "training.gpu_count" and "set training.gpu_count to at most 1" in error.message
    error = refused(spec({"gpu_count": 4}), Hardware(cuda=True, gpus=2, bf16=True))
    assert "has 2 CUDA GPU(s)" in error.message


def test_model_problems(spec, tmp_path):
    error = refused(spec(model={"base_model": str(tmp_path / "no-model")}))
    assert error.field == "model.base_model" and "check the hub id or path" in error.message
    error = refused(spec(model={"max_seq_length": 4096}))
    assert error.field == "model.max_seq_length" and "at most 512" in error.message


def test_schedule_and_prediction_knobs(spec):
    assert refused(spec({"warmup_steps": 5, "warmup_ratio": 0.1})).field == "training.warmup_steps"
    error = refused(spec({"lr_scheduler": "constant", "warmup_steps": 5}))
    assert "'constant_with_warmup'" in error.message
    assert refused(spec({"eval_steps": 5}, data={"eval_split": 0})).field == "training.eval_steps"
    error = refused(spec(data={"eval_split": 0}, predictions={"frequency": "eval"}))
    assert error.field == "predictions.frequency" and "set data.eval_split" in error.message


def test_resume_needs_a_checkpoint_folder(spec, tmp_path):
    error = refused(spec(resume_from_checkpoint=str(tmp_path)))
    assert error.field == "resume_from_checkpoint" and "trainer_state.json" in error.message
    check_spec(spec(resume_from_checkpoint="latest"), hardware=CPU)


@pytest.mark.parametrize(("rlhf", "message"), [
    ({"reward_model": "rm", "judge_url": "http://j/v1", "judge_model": "m"}, "set only one of"),
    ({"judge_url": "http://j/v1"}, "needs training.rlhf.judge_model"),
    ({"judge_url": "j/v1", "judge_model": "m"}, "must start with http"),
    ({"judge_model": "m"}, "need training.rlhf.judge_url"),
    ({"judge_url": "http://j/v1", "judge_model": "m", "judge_api_key_env": "sk-live-123"}, "the NAME of an"),
    ({"num_generations": 1}, "greater than or equal to 2"),
])
def test_rlhf_section_validators_name_the_field(rlhf, message):
    with pytest.raises(ValidationError) as info:
        TrainingConfig.model_validate({"model": {"base_model": "m"}, "data": {"dataset_id": "d"},
                                       "training": {"method": "rlhf", "rlhf": rlhf}})
    assert message in str(info.value)


def test_merge_adapter_needs_lora():
    with pytest.raises(ValidationError, match=r"training\.merge_adapter needs training\.lora\.enabled"):
        TrainingConfig.model_validate({"model": {"base_model": "m"}, "data": {"dataset_id": "d"},
                                       "training": {"merge_adapter": True, "lora": {"enabled": False}}})

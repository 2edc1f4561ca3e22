from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from shared.config import LoraSection
from shared.jobspec import JobSpec
from trainer.methods import build_args, build_sft_config
from trainer.modeling import build_lora_config, default_target_modules


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def _spec(training: dict | None = None, fmt: str = "instruction") -> JobSpec:
    return JobSpec.model_validate({
        "job_id": "j",
        "config": {"model": {"base_model": "m", "max_seq_length": 256}, "data": {"train_path": "d.jsonl"},
                   "training": training or {}},
        "dataset_path": "d.jsonl",
        "dataset_format": fmt,
        "output_dir": "/tmp/out",
    })


def test_default_targets_are_the_attention_projections(model):
    assert default_target_modules(model) == ["q_proj", "v_proj"]
    config = build_lora_config(LoraSection(r=4, alpha=8, dropout=0.1, bias="none"), model)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert (config.r, config.lora_alpha, config.lora_dropout, config.task_type) == (4, 8, 0.1, "CAUSAL_LM")


def test_explicit_and_all_linear_targets_pass_through(model):
    assert build_lora_config(LoraSection(target_modules="all-linear"), model).target_modules == "all-linear"
    assert set(build_lora_config(LoraSection(target_modules=["o_proj"]), model).target_modules) == {"o_proj"}


def test_sft_config_mapping():
    spec = _spec({
        "epochs": 2, "batch_size": 3, "gradient_accumulation_steps": 2, "learning_rate": 1e-3,
        "lr_scheduler": "cosine", "warmup_ratio": 0.1, "weight_decay": 0.01, "optimizer": "paged_adamw_32bit",
        "max_grad_norm": 0.5, "seed": 5, "logging_steps": 2, "eval_steps": 7, "save_steps": 9,
    })
    args = build_sft_config(spec, has_eval=True, cuda=False, printer=lambda _: None)
    assert (args.num_train_epochs, args.max_steps) == (2, -1)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (3, 2)
    assert (args.learning_rate, args.lr_scheduler_type.value, args.warmup_steps) == (1e-3, "cosine", 0.1)
    assert (args.weight_decay, args.optim.value, args.max_grad_norm, args.seed) == (0.01, "adamw_torch", 0.5, 5)
    assert (args.eval_strategy.value, args.eval_steps, args.save_strategy.value, args.save_steps) == (
        "steps", 7, "steps", 9
    )
    assert (args.logging_steps, args.max_length, args.use_cpu, args.report_to) == (2, None, True, [])
    assert args.padding_free and args.activation_checkpointing is False and args.bf16 is False
    padded = build_sft_config(_spec({"padding_free": False, "gradient_checkpointing": True}), has_eval=False,
                              cuda=False)
    assert (padded.padding_free, padded.max_length, padded.activation_checkpointing) == (False, 256, True)

    per_epoch = build_sft_config(_spec({"max_steps": 5, "warmup_steps": 3}), has_eval=True, cuda=False)
    assert (per_epoch.max_steps, per_epoch.warmup_steps) == (5, 3)
    assert (per_epoch.eval_strategy.value, per_epoch.save_strategy.value) == ("epoch", "epoch")
    assert build_sft_config(_spec(), has_eval=False, cuda=False).eval_strategy.value == "no"


def test_method_configs():
    dpo = build_args(_spec({"method": "dpo", "beta": 0.3, "optimizer": "sgd"}, fmt="preference"), has_eval=False,
                     cuda=False)
    assert (type(dpo).__name__, dpo.beta, dpo.max_length, dpo.optim.value) == ("DPOConfig", 0.3, 256, "sgd")
    orpo = build_args(_spec({"method": "orpo", "beta": 0.2}, fmt="preference"), has_eval=True, cuda=False)
    assert (type(orpo).__name__, orpo.beta, orpo.max_length, orpo.eval_strategy.value) == (
        "ORPOConfig", 0.2, 256, "epoch"
    )
    rlhf = {"method": "rlhf", "batch_size": 4, "rlhf": {"reward_model": "rm", "num_generations": 2,
                                                        "max_completion_length": 16}}
    grpo = build_args(_spec(rlhf, fmt="chat"), has_eval=True, cuda=False)
    assert (type(grpo).__name__, grpo.num_generations, grpo.max_completion_length) == ("GRPOConfig", 2, 16)
    assert grpo.per_device_eval_batch_size == 2
    rloo = build_args(_spec({**rlhf, "rlhf": {**rlhf["rlhf"], "algorithm": "rloo"}}, fmt="chat"), has_eval=False,
                      cuda=False)
    assert type(rloo).__name__ == "RLOOConfig"


def test_the_documents_device_map_and_torch_dtype_reach_the_model(tiny_model_dir):
    import torch

    from shared.config import TrainingConfig
    from trainer.errors import ConfigRefused
    from trainer.modeling import cuda_available, load_model, model_dtype, use_cuda

    def config(**model) -> TrainingConfig:
        return TrainingConfig.model_validate({"model": {"name": tiny_model_dir, **model}})

    loaded = load_model(config(torch_dtype="bfloat16"))
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert model_dtype(config()) == torch.float32  # auto, with no bf16/fp16 training and no quantization
    assert model_dtype(TrainingConfig.model_validate({"model": tiny_model_dir, "training": {"bf16": True}})) \
        == torch.bfloat16
    assert use_cuda(config(device_map="cpu")) is False
    assert use_cuda(config(device_map="auto")) is cuda_available()
    if cuda_available():
        assert use_cuda(config(device_map="cuda")) is True
    else:
        with pytest.raises(ConfigRefused) as refused:
            use_cuda(config(device_map="cuda"))
        assert refused.value.field == "model.device_map" and "no GPU" in refused.value.message

"""The estimator's arithmetic against the libraries it stands for: parameter counts as transformers builds the model
(on the meta device: no memory), LoRA parameters as peft adds them, and the published-figure table of the bench."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import TrainingConfig
from shared.estimate import (
    GIB,
    DataShape,
    ModelConfigError,
    ModelShape,
    batch_tokens,
    fits,
    gpu_spec,
    hours,
    memory,
    step_flops,
    training_tokens,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "model_configs"
MODELS = ["Qwen2.5-0.5B", "Qwen2.5-7B", "Meta-Llama-3-8B", "Meta-Llama-3-70B"]


def raw(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def config(**training) -> TrainingConfig:
    return TrainingConfig.model_validate({"name": "e", "model": {"base_model": "m", "max_seq_length": 512},
                                          "training": training})


def meta_model(name: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**raw(name)))


@pytest.mark.parametrize("name", MODELS)
def test_parameters_are_counted_as_transformers_builds_the_model(name):
    model = meta_model(name)
    assert ModelShape.from_config(raw(name)).params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("targets", [None, "all-linear", ["q_proj", "v_proj"]])
def test_lora_parameters_are_counted_as_peft_adds_them(targets):
    from peft import LoraConfig, get_peft_model

    peft_targets = ["q_proj", "v_proj"] if targets is None else targets  # what the trainer picks for Qwen2
    model = get_peft_model(meta_model("Qwen2.5-0.5B"), LoraConfig(r=8, lora_alpha=16, target_modules=peft_targets))
    added = sum(p.numel() for p in model.parameters() if p.requires_grad)
    estimate = memory(ModelShape.from_config(raw("Qwen2.5-0.5B")), config(lora={"r": 8, "target_modules": targets}),
                      batch_tokens=512, row_tokens=512)
    assert estimate.trainable_params == added
    assert estimate.trainable == added * 16  # fp32 weights, gradients and Adam's two moments


def test_each_knob_moves_memory_the_way_it_should():
    shape = ModelShape.from_config(raw("Meta-Llama-3-8B"))

    def peak(**training) -> float:
        return memory(shape, config(bf16=True, **training), batch_tokens=2048, row_tokens=512).peak

    assert peak(quantization={"bits": 4}) < peak(quantization={"bits": 8}) < peak()
    assert peak(gradient_checkpointing=True) < peak()
    assert peak(lora={"enabled": False}) > 2 * peak()  # a full fine-tune keeps gradients and Adam for all 8B
    assert peak(lora={"enabled": False}, optimizer="paged_adamw_32bit") > peak(lora={"enabled": False})
    assert peak(lora={"dropout": 0.0}) < peak()  # peft keeps dropout's copy of each targeted input
    assert peak(optimizer="sgd") < peak()
    sixteen = memory(shape, config(bf16=True), batch_tokens=1, row_tokens=1).weights
    assert sixteen == shape.params * 2
    four = memory(shape, config(quantization={"bits": 4}), batch_tokens=1, row_tokens=1).weights
    embeddings = 2 * shape.vocab * shape.hidden + (2 * shape.layers + 1) * shape.hidden
    decoder = shape.params - embeddings
    assert four == pytest.approx(decoder * (0.5 + 4 / 256) + embeddings * 4)  # peft casts the rest to fp32
    fp32 = memory(shape, config(), batch_tokens=1, row_tokens=1).weights  # no dtype asked: the trainer loads fp32
    assert fp32 == shape.params * 4 == 2 * sixteen


def test_batches_are_counted_as_the_trainer_builds_them():
    data = DataShape(rows=1000, tokens_per_row=100.0, longest_row=500)
    assert batch_tokens(config(batch_size=8), data) == 500 + 7 * 100  # packed: the longest row with average ones
    assert batch_tokens(config(batch_size=8, padding_free=False), data) == 8 * 500
    assert batch_tokens(config(method="dpo", batch_size=8), data) == 2 * 8 * 500  # chosen and rejected
    assert training_tokens(config(max_steps=10, batch_size=8, gradient_accumulation_steps=2), data) == 16_000
    assert training_tokens(config(epochs=2), data) == 2 * 900 * 100  # the eval split (0.1) is not trained on
    shape = ModelShape.from_config(raw("Qwen2.5-0.5B"))
    lora = memory(shape, config(), batch_tokens=1, row_tokens=1)
    assert step_flops(shape, config(), 1000, lora.trainable_params) < 6 * shape.params * 1000
    assert step_flops(shape, config(gradient_checkpointing=True), 1000, lora.trainable_params) > \
        step_flops(shape, config(), 1000, lora.trainable_params)


def test_a_gpu_too_small_is_flagged_saying_what_to_change():
    shape = ModelShape.from_config(raw("Meta-Llama-3-70B"))
    estimate = memory(shape, config(bf16=True), batch_tokens=512, row_tokens=512)
    ok, why = fits(estimate, 80)
    assert not ok and "the GPU has 80 GiB" in why and "weights" in why and "training.quantization.bits" in why
    assert fits(memory(shape, config(quantization={"bits": 4}, gradient_checkpointing=True), batch_tokens=512,
                       row_tokens=512), 80) == (True, None)
    big_batch = memory(ModelShape.from_config(raw("Qwen2.5-0.5B")), config(), batch_tokens=65_536, row_tokens=512)
    ok, why = fits(big_batch, 24)
    assert not ok and "activations" in why and "training.batch_size" in why
    assert big_batch.needed > big_batch.peak + 0.5 * GIB  # the CUDA context and the allocator's slack


def test_a_config_that_is_not_a_decoder_is_refused_naming_what_is_missing():
    with pytest.raises(ModelConfigError, match="intermediate_size"):
        ModelShape.from_config({"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                                "vocab_size": 10})


def test_the_published_figure_table_ends_with_its_summary():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "estimate.py")], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    last = out.strip().splitlines()[-1]
    found = re.fullmatch(r"cases=(\d+) within_20pct=(\d+) worst_ratio=([\d.]+)", last)
    assert found, last
    cases, within, worst = int(found[1]), int(found[2]), float(found[3])
    assert cases == 6 and 0 <= within <= cases and 0.5 < worst < 2.0
    rows = {line.split("  ")[0]: line.split() for line in out.splitlines()[1:-1]}
    assert set(rows) == {f"LLaMA-Factory {size} {method}" for size in ("7B", "70B")
                         for method in ("LoRA 16-bit", "QLoRA 8-bit", "QLoRA 4-bit")}
    for cells in rows.values():  # the 70B rows: the vocabulary a small part, the estimate within 10%
        if cells[1] == "70B":
            assert 0.9 <= float(cells[-4]) <= 1.1, cells


def test_time_follows_the_flops_over_the_gpus_sustained_peak():
    shape = ModelShape.from_config(raw("Meta-Llama-3-8B"))
    lora = memory(shape, config(), batch_tokens=1, row_tokens=1)
    flops = step_flops(shape, config(), 10_000_000, lora.trainable_params)  # ten million tokens
    h100, a4000 = gpu_spec("NVIDIA H100 80GB HBM3", 80), gpu_spec("NVIDIA RTX A4000", 16)
    assert hours(flops, h100) == pytest.approx(flops / (989e12 * 0.35) / 3600)
    assert hours(flops, a4000) > 10 * hours(flops, h100)
    assert hours(flops, h100, gpus=2) == pytest.approx(hours(flops, h100) / 2)
    assert 0.2 < hours(flops, h100) < 0.3  # 4 x 8B x 1e7 = 3.2e17 FLOPs at ~350 TFLOPS: a quarter of an hour


@pytest.mark.parametrize(("text", "tflops"), [
    ("NVIDIA H100 PCIe", 756), ("gpu_8x_h100_sxm5 8x H100 (80 GB SXM5)", 989), ("NVIDIA A100 80GB PCIe", 312),
    ("gpu_1x_a10 1x A10 (24 GB PCIe)", 125), ("a10g-small Nvidia A10G - small", 70), ("NVIDIA L4", 121),
    ("NVIDIA L40S", 362), ("NVIDIA RTX 6000 Ada Generation", 364), ("NVIDIA RTX A6000", 155),
    ("NvidiaTeslaT4 2x Nvidia Tesla T4", 65), ("t4-small Nvidia T4 - small", 65)])
def test_offers_are_matched_to_their_gpus_datasheet(text, tflops):
    assert gpu_spec(text, 24).tflops_16bit == tflops
    assert gpu_spec(text, None) is None


def test_an_unknown_gpu_has_no_spec():
    assert gpu_spec("AMD Instinct MI300X", 192) is None

"""The checks made on an adapter before an engine gets it, on real PEFT adapters of the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.model_registry.serving.checks import adapter_rank, check_adapter, has_chat_template
from shared.serving import ServerType

ENGINES = list(ServerType)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from trainer.tiny_model import build_tiny_model

    return Path(build_tiny_model(str(tmp_path_factory.mktemp("checks-base") / "model")))


@pytest.fixture(scope="module")
def make_adapter(base, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("checks-adapters")

    def make(name: str, **lora) -> Path:
        lora.setdefault("r", 8)
        lora.setdefault("target_modules", ["q_proj", "v_proj"])
        model = AutoModelForCausalLM.from_pretrained(str(base))
        out = root / name
        get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora)).save_pretrained(str(out))
        return out

    return make


@pytest.fixture(scope="module")
def plain(make_adapter) -> Path:
    return make_adapter("plain")


def only(findings, field: str):
    assert [f.field for f in findings] == [field], findings
    return findings[0]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_plain_adapter_passes_on_every_engine(plain, base, engine):
    assert check_adapter(plain, base, engine) == []
    assert check_adapter(plain, None, engine) == []


def test_dora_is_refused_on_vllm_and_ollama_and_fine_on_builtin(make_adapter, base):
    dora = make_adapter("dora", use_dora=True)
    finding = only(check_adapter(dora, base, ServerType.VLLM), "adapter_config.use_dora")
    assert finding.level == "error"
    assert "vLLM does not serve DoRA adapters" in finding.message
    assert "merge_adapter" in finding.message and "builtin" in finding.message
    finding = only(check_adapter(dora, base, ServerType.OLLAMA), "adapter_config.use_dora")
    assert finding.level == "error" and "DoRA" in finding.message
    assert check_adapter(dora, base, ServerType.BUILTIN) == []


def test_modules_to_save_warns_on_vllm_and_ollama_only(make_adapter, base):
    saved = make_adapter("saved", modules_to_save=["lm_head"])
    for engine in (ServerType.VLLM, ServerType.OLLAMA):
        finding = only(check_adapter(saved, base, engine), "adapter_config.modules_to_save")
        assert finding.level == "warning"
        assert "lm_head" in finding.message and "merge" in finding.message
    assert check_adapter(saved, base, ServerType.BUILTIN) == []


def test_a_rank_above_the_limit_is_an_error(make_adapter, base):
    big = make_adapter("big", r=64)
    assert adapter_rank(big) == 64
    finding = only(check_adapter(big, base, ServerType.VLLM, max_rank=16), "adapter_config.r")
    assert finding.level == "error"
    assert "r=64" in finding.message and "16" in finding.message and "training.lora.r" in finding.message
    assert check_adapter(big, base, ServerType.VLLM, max_rank=64) == []


def test_rank_pattern_counts_towards_the_rank(plain, tmp_path, base):
    patterned = tmp_path / "patterned"
    shutil.copytree(plain, patterned)
    config = json.loads((patterned / "adapter_config.json").read_text())
    config["rank_pattern"] = {"q_proj": 32}
    (patterned / "adapter_config.json").write_text(json.dumps(config))
    assert adapter_rank(patterned) == 32
    finding = only(check_adapter(patterned, base, ServerType.VLLM, max_rank=16), "adapter_config.rank_pattern.q_proj")
    assert "32" in finding.message and "16" in finding.message


def test_target_modules_the_base_lacks_are_named(plain, tmp_path, base):
    # PEFT refuses unknown targets when the adapter is created, so edit a saved one as a hand-written config would be.
    wrong = tmp_path / "wrong"
    shutil.copytree(plain, wrong)
    config = json.loads((wrong / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "not_a_module"]
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    finding = only(check_adapter(wrong, base, ServerType.VLLM), "adapter_config.target_modules")
    assert finding.level == "error"
    assert "not_a_module" in finding.message and "q_proj," not in finding.message.split("(")[0]
    assert "v_proj" in finding.message  # a name that exists
    assert "silently falls back" in finding.message
    assert check_adapter(wrong, None, ServerType.VLLM) == []  # a Hub base: nothing to read

    config["target_modules"] = "all-linear"
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    assert check_adapter(wrong, base, ServerType.VLLM) == []
    config["target_modules"] = r".*\.not_a_module"
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    assert only(check_adapter(wrong, base, ServerType.VLLM), "adapter_config.target_modules").level == "error"


def test_a_file_or_a_folder_without_adapter_config_is_an_error(plain, tmp_path, base):
    file = plain / "adapter_model.safetensors"
    finding = only(check_adapter(file, base, ServerType.VLLM), "adapter_dir")
    assert finding.level == "error"
    assert "is a file" in finding.message and "adapter_config.json and adapter_model.safetensors" in finding.message
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "weights.bin").write_bytes(b"")
    finding = only(check_adapter(empty, base, ServerType.BUILTIN), "adapter_dir")
    assert "no adapter_config.json" in finding.message and "weights.bin" in finding.message
    assert adapter_rank(empty) == 0


def test_a_base_without_chat_template_warns(plain, base, tmp_path):
    bare = tmp_path / "bare-base"
    shutil.copytree(base, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    (bare / "chat_template.json").unlink(missing_ok=True)
    tokenizer_config = json.loads((bare / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert has_chat_template(base) and not has_chat_template(bare)

    adapter = tmp_path / "adapter"
    shutil.copytree(plain, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(bare)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    finding = only(check_adapter(adapter, bare, ServerType.BUILTIN), "chat_template")
    assert finding.level == "warning"
    assert "/v1/completions" in finding.message and "chat_template" in finding.message

    (adapter / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert check_adapter(adapter, bare, ServerType.BUILTIN) == []


def test_an_adapter_trained_on_another_local_base_warns(plain, base, tmp_path):
    other = tmp_path / "other-base"
    shutil.copytree(base, other)
    finding = only(check_adapter(plain, other, ServerType.VLLM), "adapter_config.base_model_name_or_path")
    assert finding.level == "warning"
    assert str(base.resolve()) in finding.message and str(other.resolve()) in finding.message

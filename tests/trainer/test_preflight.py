"""Preflight: a few CPU steps on a tiny copy of the base model catch data, template and config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import TrainingConfig
from trainer.preflight import run_preflight, shrink_config
from trainer.tiny_model import write_sample_dataset

REPO = Path(__file__).resolve().parents[2]


def _config(base_model: str, **training) -> TrainingConfig:
    return TrainingConfig.model_validate({
        "model": {"base_model": base_model, "max_seq_length": 64},
        "data": {"dataset_id": "uploaded"},
        "training": {"batch_size": 2, "lora": {"r": 4}, **training},
    })


def test_a_good_configuration_passes(tiny_model_dir, tmp_path):
    data = write_sample_dataset(str(tmp_path / "chat.jsonl"), rows=40, fmt="chat")
    config = _config(tiny_model_dir, fp16=True, gpu_count=4, epochs=3, save_steps=1000)
    report = run_preflight(config, data, "chat", steps=3, work_dir=str(tmp_path / "work"), printer=lambda _l: None)

    assert report.ok, report
    assert (report.steps, report.method, report.error_type) == (3, "sft", None)
    assert report.final_loss is not None and report.train_samples > 0
    assert report.model["architecture"] == "LlamaForCausalLM" and report.model["layers"] == 2
    assert set(report.timings) == {"check_s", "data_s", "build_model_s", "train_s", "total_s"}
    assert any("float32" in note for note in report.notes) and any("gpu_count=4" in note for note in report.notes)


def test_rlhf_preflight_uses_a_tiny_reward_model(tiny_model_dir, tiny_reward_model_dir, tmp_path):
    data = write_sample_dataset(str(tmp_path / "pref.jsonl"), rows=20, fmt="preference")
    config = _config(tiny_model_dir, method="rlhf", rlhf={"reward_model": tiny_reward_model_dir, "num_generations": 2,
                                                          "max_completion_length": 4})
    report = run_preflight(config, data, "preference", steps=2, work_dir=str(tmp_path / "w"), printer=lambda _l: None)
    assert report.ok, report
    assert any("reward model" in note for note in report.notes)


def test_rlhf_preflight_never_calls_the_judge(tiny_model_dir, tmp_path):
    """Preflight runs on a server: it must not call an address a configuration names (SSRF), nor need the key."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.0)
    data = write_sample_dataset(str(tmp_path / "pref.jsonl"), rows=20, fmt="preference")
    judge = {"judge_url": f"http://127.0.0.1:{listener.getsockname()[1]}/v1", "judge_model": "m",
             "judge_api_key_secret": "judge", "num_generations": 2, "max_completion_length": 4}
    config = _config(tiny_model_dir, method="rlhf", rlhf=judge)
    report = run_preflight(config, data, "preference", steps=2, work_dir=str(tmp_path / "w"), printer=lambda _l: None)
    assert report.ok, report
    assert any("judge is not called" in note for note in report.notes)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    listener.close()


def test_a_broken_data_set_is_caught_with_its_line(tiny_model_dir, tmp_path):
    good = {"messages": [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima"}]}
    empty = {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": " "},
                          {"role": "assistant", "content": "Lima"}]}
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [good, good, empty, good, empty]))
    report = run_preflight(_config(tiny_model_dir), str(path), "chat", work_dir=str(tmp_path / "w"),
                           printer=lambda _l: None)

    assert not report.ok
    assert (report.error_type, report.error_field) == ("DatasetError", "data")
    assert "line 3: every message before the last assistant reply is empty" in report.error_message
    assert "line 5" in report.error_message
    assert "train_s" not in report.timings


def test_a_target_module_the_model_lacks_is_refused(tiny_model_dir, tmp_path):
    data = write_sample_dataset(str(tmp_path / "i.jsonl"), rows=20, fmt="instruction")
    config = _config(tiny_model_dir, lora={"target_modules": ["c_attn"]})
    report = run_preflight(config, data, "instruction", work_dir=str(tmp_path / "w"), printer=lambda _l: None)

    assert not report.ok
    assert (report.error_type, report.error_field) == ("ConfigRefused", "training.lora.target_modules")
    assert "['c_attn']" in report.error_message


def test_shrink_keeps_the_architecture():
    from transformers import Gemma2Config, Qwen2Config

    qwen = shrink_config(Qwen2Config(num_key_value_heads=4, num_hidden_layers=28, layer_types=["full_attention"] * 28))
    assert (qwen.num_hidden_layers, qwen.hidden_size, qwen.num_attention_heads, qwen.num_key_value_heads) == (
        2, 64, 4, 2
    )
    assert qwen.layer_types == ["full_attention"] * 2 and qwen.vocab_size == Qwen2Config().vocab_size
    gemma = shrink_config(Gemma2Config())
    assert (gemma.head_dim, gemma.intermediate_size, len(gemma.layer_types)) == (16, 128, 2)


def test_cli_prints_one_json_report(tiny_model_dir, tmp_path):
    data = write_sample_dataset(str(tmp_path / "i.jsonl"), rows=20, fmt="instruction")
    config_path = tmp_path / "config.json"
    config_path.write_text(_config(tiny_model_dir).model_dump_json())
    bad_path = tmp_path / "bad.json"
    bad_path.write_text(json.dumps({"model": {"base_model": tiny_model_dir}, "data": {"dataset_id": "d"},
                                    "training": {"lora": {"r": 0}}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "trainer.preflight", "--data", data, "--format", "instruction", "--json",
               "--work-dir", str(tmp_path / "w")]

    proc = subprocess.run([*command, "--config", str(config_path)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["steps"] == 3 and report["timings"]["total_s"] > 0
    assert len(proc.stdout.strip().splitlines()) == 1 and "[trainer]" in proc.stderr

    proc = subprocess.run([*command, "--config", str(bad_path)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (report["ok"], report["error_type"], report["error_field"]) == (False, "ValidationError",
                                                                            "training.lora.r")

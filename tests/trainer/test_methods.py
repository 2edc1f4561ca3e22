"""DPO, ORPO, online RL (reward model and LLM judge) and QLoRA each train a few steps end to end on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer import modeling
from trainer.rewards import JudgeError, JudgeReward, chat_completions_url, parse_grade
from trainer.tiny_model import CAPITALS
from trainer.train import run

FEW_STEPS = {"max_steps": 4, "batch_size": 4, "learning_rate": 0.01}


def _spooled(spec) -> tuple[list[dict], list[dict]]:
    path = Path(spec.output_dir) / "metrics-spool.jsonl"
    batches = [json.loads(line) for line in path.read_text().splitlines()]
    return [m for b in batches for m in b["metrics"]], [p for b in batches for p in b["predictions"]]


def _train_steps(metrics: list[dict]) -> list[int]:
    return sorted(m["step"] for m in metrics if "loss" in m["values"])


def test_dpo_trains_and_predicts_the_chosen_answer(make_spec, collector):
    spec = make_spec(fmt="preference", rows=24, ingest_url=collector.url, training={**FEW_STEPS, "method": "dpo"},
                     predictions={"frequency": "steps", "step_interval": 2, "sample_count": 2})
    result = run(spec, printer=lambda _line: None)

    assert result.status == "completed" and result.global_step == 4
    train = [m for m in collector.metrics() if "loss" in m["values"]]
    assert sorted(m["step"] for m in train) == [1, 2, 3, 4]
    assert all({"rewards/chosen", "rewards/margins", "system_cpu_percent"} <= set(m["values"]) for m in train)
    predictions = collector.predictions()
    assert sorted((p["step"], p["sample_index"]) for p in predictions) == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert all(p["expected"] in CAPITALS.values() and p["prompt"].startswith("<|user|>\n") for p in predictions)
    assert all(set(p["scores"]) == {"bleu", "rouge_l"} for p in predictions)
    out = Path(spec.output_dir)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["method"] == "dpo" and metadata["padding_free"] is False
    assert json.loads((out / "training_args.json").read_text())["beta"] == 0.1


def test_orpo_trains(make_spec):
    spec = make_spec(fmt="preference", rows=24, training={**FEW_STEPS, "method": "orpo", "beta": 0.2},
                     predictions={"enabled": False})
    result = run(spec, printer=lambda _line: None)

    assert result.status == "completed" and result.global_step == 4 and result.final_eval_loss is not None
    metrics, predictions = _spooled(spec)
    assert _train_steps(metrics) == [1, 2, 3, 4]
    assert all("log_odds_ratio" in m["values"] for m in metrics if "loss" in m["values"])
    assert predictions == []
    assert json.loads((Path(spec.output_dir) / "training_args.json").read_text())["beta"] == 0.2


def test_rlhf_with_a_reward_model(make_spec, tiny_reward_model_dir):
    spec = make_spec(fmt="chat", rows=24, training={
        **FEW_STEPS, "method": "rlhf",
        "rlhf": {"reward_model": tiny_reward_model_dir, "num_generations": 2, "max_completion_length": 6},
    }, predictions={"sample_count": 1})
    result = run(spec, printer=lambda _line: None)

    assert result.status == "completed" and result.global_step == 4
    metrics, predictions = _spooled(spec)
    train = [m for m in metrics if "loss" in m["values"]]
    assert [m["step"] for m in train] == [1, 2, 3, 4]
    assert all({"reward", "reward_std", "completions/mean_length"} <= set(m["values"]) for m in train)
    assert [p["step"] for p in predictions] == [4]
    metadata = json.loads((Path(spec.output_dir) / "metadata.json").read_text())
    assert metadata["rlhf_reward"] == f"reward_model:{tiny_reward_model_dir}"
    assert metadata["rlhf"]["algorithm"] == "grpo"


def test_rlhf_with_an_llm_judge(make_spec, judge, monkeypatch):
    monkeypatch.setenv("TF_JUDGE_KEY", judge.key)
    spec = make_spec(fmt="instruction", rows=16, training={
        **FEW_STEPS, "max_steps": 2, "method": "rlhf",
        "rlhf": {"algorithm": "rloo", "judge_url": judge.url, "judge_model": "grader-1",
                 "judge_api_key_env": "TF_JUDGE_KEY", "num_generations": 2, "max_completion_length": 4},
    }, data={"eval_split": 0.0}, predictions={"enabled": False})
    printed: list[str] = []
    result = run(spec, printer=printed.append)

    assert result.status == "completed" and result.global_step == 2
    assert judge.refused == 0 and len(judge.requests) == 8  # 2 steps x 4 completions
    request = judge.requests[0]
    assert request["model"] == "grader-1" and request["messages"][0]["role"] == "system"
    assert "Reference answer:" in request["messages"][1]["content"]
    metrics, _ = _spooled(spec)
    assert all(m["values"]["reward"] == pytest.approx(0.7) for m in metrics if "reward" in m["values"])
    written = "".join(p.read_text(errors="ignore") for p in Path(spec.output_dir).rglob("*.json*"))
    assert judge.key not in written + "\n".join(printed)


def test_a_judge_that_refuses_the_key_fails_clearly(judge):
    reward = JudgeReward(judge.url, "grader-1", "sk-wrong", key_env="TF_JUDGE_KEY", retries=0)
    with pytest.raises(JudgeError) as info:
        reward(["Q?"], ["A"], reference=["A"])
    assert "HTTP 401" in str(info.value) and "TF_JUDGE_KEY" in str(info.value) and "sk-wrong" not in str(info.value)
    missing = JudgeReward(judge.url.removesuffix("/v1") + "/nope", "m", judge.key, retries=0)
    with pytest.raises(JudgeError, match=r"HTTP 404.*training\.rlhf\.judge_url"):
        missing(["Q?"], ["A"])
    down = JudgeReward("http://127.0.0.1:9/v1", "m", retries=1)
    with pytest.raises(JudgeError, match=r"did not answer .* after 2 tries"):
        down(["Q?"], ["A"])


def test_a_judge_on_a_private_address_is_not_called_from_a_server(judge, monkeypatch):
    """A local job's trainer runs on the server: judge_url may not reach into the operator's network (SSRF)."""
    guarded = JudgeReward(judge.url, "grader-1", judge.key, retries=0, public_only=True)
    with pytest.raises(JudgeError, match=r"127\.0\.0\.1, a private, loopback.*TUNEFLEET_ALLOW_PRIVATE_URLS"):
        guarded(["Q?"], ["A"])
    metadata = JudgeReward("http://169.254.169.254/v1", "m", retries=0, public_only=True)
    with pytest.raises(JudgeError, match=r"169\.254\.169\.254"):
        metadata(["Q?"], ["A"])
    assert judge.requests == [] and judge.hosts == []
    # A name that resolved to a public address when checked is called at that very address (pinned), with its
    # own name as Host: a second resolution (DNS rebinding) never decides where the request goes.
    port = int(judge.url.rsplit(":", 1)[1].split("/")[0])
    checked = []

    def resolve(host, port):
        checked.append(host)
        return "127.0.0.1"  # stands in for the public address the name had when checked

    monkeypatch.setattr("trainer.rewards.public_address", resolve)
    named = JudgeReward(f"http://judge.invalid:{port}/v1", "grader-1", judge.key, retries=0, public_only=True)
    assert named(["Q?"], ["A"]) == [pytest.approx(0.7)]
    assert checked == ["judge.invalid"] and judge.hosts == [f"judge.invalid:{port}"]


def test_judge_helpers():
    assert chat_completions_url("https://api.example.com/v1/") == "https://api.example.com/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    assert [parse_grade(t) for t in ("7", "Grade: 8.5/10", "12", "-3", "none")] == [0.7, 0.85, 1.0, 0.0, None]


@pytest.mark.parametrize("quantization", [{"bits": 4, "quant_type": "nf4"}, {"bits": 8}])
def test_qlora_trains_on_cpu_and_merges(make_spec, tiny_model_dir, monkeypatch, quantization):
    loaded = []
    load = modeling.load_model
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1])
    spec = make_spec(fmt="chat", rows=16, training={
        **FEW_STEPS, "max_steps": 3, "quantization": quantization, "gradient_checkpointing": True,
        "optimizer": "paged_adamw_32bit", "merge_adapter": True, "warmup_steps": 1, "weight_decay": 0.01,
    }, predictions={"enabled": False})
    result = run(spec, printer=lambda _line: None)

    assert result.status == "completed" and result.global_step == 3
    assert result.final_loss is not None and result.final_loss == result.final_loss
    layer = "Linear4bit" if quantization["bits"] == 4 else "Linear8bitLt"
    assert any(type(m).__name__ == layer for m in loaded[0].modules())
    out = Path(spec.output_dir)
    assert result.merged_path == str(out / "merged")
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "tokenizer.json").is_file()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(result.merged_path)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        assert merged.generate(torch.tensor([[1, 20, 30]]), max_new_tokens=2).shape[1] == 5
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["quantization"]["bits"] == quantization["bits"] and metadata["merged_path"] == result.merged_path

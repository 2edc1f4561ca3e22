"""End to end: ``python -m trainer --spec`` on the tiny model against a local collector."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from shared.jobspec import JobSpec, TrainerResult

REPO = Path(__file__).resolve().parents[2]
TOKEN = "tok-e2e-9f8e7d6c5b4a"


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _command(spec: Path) -> list[str]:
    return [sys.executable, "-m", "trainer", "--spec", str(spec)]


def _result(spec: Path) -> TrainerResult:
    out = Path(JobSpec.read(str(spec)).output_dir)
    return TrainerResult.model_validate_json((out / "result.json").read_text())


def test_training_end_to_end(collector, write_spec, tiny_model_dir):
    spec = write_spec(
        ingest_url=collector.url,
        training={"max_steps": 20, "eval_steps": 10, "save_steps": 10},
        predictions={"frequency": "eval"},
    )
    proc = subprocess.run(_command(spec), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[trainer] train step=20/20" in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr

    metrics = collector.metrics()
    train = sorted((m for m in metrics if "loss" in m["values"]), key=lambda m: m["step"])
    evals = sorted((m for m in metrics if "eval_loss" in m["values"]), key=lambda m: m["step"])
    assert [m["step"] for m in train] == list(range(1, 21))
    assert [m["step"] for m in evals] == [10, 20]
    assert len(metrics) == len(train) + len(evals)
    losses = [m["values"]["loss"] for m in train]
    assert statistics.fmean(losses[-5:]) < statistics.fmean(losses[:5])
    for m in train:
        assert {"learning_rate", "grad_norm", "samples_per_second", "tokens_per_second", "memory_rss_mb",
                "system_cpu_percent", "system_ram_used_mb"} <= set(m["values"])
        assert 0 < m["epoch"] < 3
    assert all(name.startswith("eval_") for m in evals for name in m["values"])

    predictions = collector.predictions()
    assert sorted((p["step"], p["sample_index"]) for p in predictions) == [(10, 0), (10, 1), (20, 0), (20, 1)]
    assert all(p["prompt"].startswith("<|user|>\n") and p["prompt"].endswith("<|assistant|>\n") for p in predictions)
    assert all(p["expected"] and isinstance(p["generated"], str) for p in predictions)
    assert all(set(p["scores"]) == {"bleu", "rouge_l"} for p in predictions)
    assert all(0 <= p["scores"]["bleu"] <= 100 and 0 <= p["scores"]["rouge_l"] <= 1 for p in predictions)

    out = Path(JobSpec.read(str(spec)).output_dir)
    result = _result(spec)
    assert result.status == "completed"
    assert (result.global_step, result.train_samples, result.eval_samples) == (20, 51, 13)
    assert result.final_loss == losses[-1]
    assert result.final_eval_loss == evals[-1]["values"]["eval_loss"]
    assert result.adapter_path == str(out / "adapter")
    assert result.checkpoint_path == str(out / "checkpoints" / "checkpoint-20")
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / "adapter" / name).is_file(), name
    training_args = json.loads((out / "training_args.json").read_text())
    assert training_args["max_steps"] == 20 and training_args["learning_rate"] == 0.01
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["job_id"] == JobSpec.read(str(spec)).job_id
    assert metadata["base_model"] == tiny_model_dir
    assert metadata["method"] == "sft"
    assert (metadata["lora"]["r"], metadata["lora"]["alpha"]) == (8, 16)
    assert metadata["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert (metadata["final_loss"], metadata["final_eval_loss"]) == (result.final_loss, result.final_eval_loss)
    assert (metadata["global_step"], metadata["train_samples"], metadata["eval_samples"]) == (20, 51, 13)
    assert metadata["training_seconds"] > 0
    assert TOKEN not in "".join(p.read_text(errors="ignore") for p in out.rglob("*.json"))
    assert not (out / "metrics-spool.jsonl").exists()

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, str(out / "adapter"))
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)
    tokenizer = AutoTokenizer.from_pretrained(str(out / "adapter"))
    ids = tokenizer("<|user|>\nWhat is the capital of Peru?\n<|assistant|>\n", return_tensors="pt")
    with torch.no_grad():
        generated = tuned.generate(**ids, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > ids.input_ids.shape[1]


def test_sigterm_stops_gracefully(collector, write_spec):
    spec = write_spec(ingest_url=collector.url, training={"max_steps": 100_000})
    proc = subprocess.Popen(_command(spec), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        started = collector.wait_for(lambda: any("loss" in m["values"] for m in collector.metrics()), 300)
        assert started, "no train metrics arrived"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stdout[-3000:] + stderr[-3000:]
    assert "received SIGTERM" in stdout

    result = _result(spec)
    assert result.status == "interrupted"
    assert 1 <= result.global_step < 100_000
    out = Path(result.output_dir)
    assert (out / "checkpoints" / f"checkpoint-{result.global_step}").is_dir()
    assert result.checkpoint_path == str(out / "checkpoints" / f"checkpoint-{result.global_step}")
    assert not (out / "adapter").exists()
    steps = {m["step"] for m in collector.metrics() if "loss" in m["values"]}
    assert result.global_step in steps


def test_refused_configs_are_written_to_result_json(write_spec, tmp_path):
    spec = write_spec(fmt="instruction", training={"method": "dpo"})
    proc = subprocess.run(_command(spec), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    result = _result(spec)
    assert result.status == "failed"
    assert (result.error_type, result.error_field) == ("ConfigRefused", "training.method")
    assert "training.method='dpo'" in result.error_message and "preference data" in result.error_message
    assert "Traceback" in result.traceback
    assert "[trainer] failed: ConfigRefused" in proc.stdout
    assert not (Path(result.output_dir) / "checkpoints").exists()


def test_unreadable_spec_exits_1(tmp_path):
    missing = tmp_path / "missing.json"
    proc = subprocess.run(_command(missing), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "cannot read the job spec" in proc.stderr


def test_run_in_process_chat_spool_only(write_spec):
    from trainer.train import run

    spec = JobSpec.read(str(write_spec(
        fmt="chat",
        rows=40,
        data={"eval_split": 0.25},
        training={"max_steps": 6, "lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"}},
        predictions={"frequency": "steps", "step_interval": 3, "sample_count": 1, "temperature": 0.7},
    )))
    printed: list[str] = []
    result = run(spec, printer=printed.append)

    assert result.status == "completed" and result.global_step == 6
    assert (result.train_samples, result.eval_samples) == (30, 10)
    assert result.final_eval_loss is not None
    spool = Path(spec.output_dir) / "metrics-spool.jsonl"
    batches = [json.loads(line) for line in spool.read_text().splitlines()]
    metrics = [m for b in batches for m in b["metrics"]]
    predictions = [p for b in batches for p in b["predictions"]]
    assert sorted(m["step"] for m in metrics if "loss" in m["values"]) == list(range(1, 7))
    assert [m["step"] for m in metrics if "eval_loss" in m["values"]] == [6]
    assert sorted(p["step"] for p in predictions) == [3, 6]
    assert predictions[0]["prompt"].endswith("<|assistant|>\n")
    metadata = json.loads((Path(spec.output_dir) / "metadata.json").read_text())
    assert metadata["lora"]["target_modules"] == "all-linear"
    assert any(line.startswith("[trainer] completed") for line in printed)

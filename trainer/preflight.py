"""Preflight: try a configuration for a few steps on the CPU before any GPU time is spent.

``run_preflight(config, dataset_path, dataset_format, steps=3, work_dir=...)``:

1. ``check_spec`` on the real configuration, without the checks that depend on the machine (precision, GPU
   count, bitsandbytes): the job will train elsewhere. The base model's module tree is built on the meta device.
2. Renders every row of the data set with the base model's own tokenizer (``trainer.data.prepare_data``), so data
   and chat-template problems show with their line numbers.
3. Builds a tiny random model with the base model's architecture and vocabulary (``AutoConfig`` shrunk to 2 layers
   and a hidden size of 64) next to the base model's tokenizer; likewise a tiny reward model for RLHF.
4. Runs the same method through ``trainer.train.run`` for ``steps`` steps on the first rows of the data, on the
   CPU, in float32 (fp16/bf16 off, one process), with predictions disabled and no ingest. Quantization stays on
   where bitsandbytes can be imported. An LLM judge is not called (preflight runs on a server, which must not
   reach out to addresses a configuration names, nor hold the judge's key): a tiny reward model stands in.

The report says ok or the error (type, config field, message), with timings and the adaptations made (``notes``).

CLI: ``python -m trainer.preflight --config CONFIG.json --data DATA.jsonl --format FMT [--steps 3]
[--work-dir DIR] [--json]``; with ``--json`` the report is the last line of stdout and progress goes to stderr.
Exit code 0 when ok, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable

from pydantic import BaseModel, Field, ValidationError

from shared.config import DataFormat, Method, TrainingConfig
from shared.jobspec import JobSpec
from trainer.errors import describe_failure

PREFLIGHT_JOB_ID = "preflight"
TINY_SIZES = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "head_dim": 16, "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64}


class PreflightReport(BaseModel):
    ok: bool
    method: str
    steps: int = 0
    error_type: str | None = None
    error_field: str | None = None
    error_message: str | None = None
    final_loss: float | None = None
    train_samples: int = 0
    eval_samples: int = 0
    model: dict = Field(default_factory=dict, description="The tiny model that trained: architecture and sizes.")
    notes: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase and in total.")


def shrink_config(model_config, *, layers_only: bool = False):
    """Shrink a model config in place to a tiny one with the same architecture and vocabulary; return it."""
    text = model_config.get_text_config()
    layers = min(TINY_SIZES["num_hidden_layers"], getattr(text, "num_hidden_layers", 2) or 2)
    updates: dict = {"num_hidden_layers": layers}
    if not layers_only:
        updates.update({k: v for k, v in TINY_SIZES.items() if k != "num_hidden_layers" and hasattr(text, k)})
        heads, kv = getattr(text, "num_attention_heads", None), getattr(text, "num_key_value_heads", None)
        if kv is not None and heads:
            updates["num_key_value_heads"] = 4 if kv >= heads else 2 if kv > 1 else 1
        for name, cap in (("num_experts", 4), ("num_local_experts", 4), ("num_experts_per_tok", 2)):
            if isinstance(getattr(text, name, None), int):
                updates[name] = min(getattr(text, name), cap)
    if isinstance(getattr(text, "layer_types", None), list):
        updates["layer_types"] = text.layer_types[:layers]
    for key, value in updates.items():
        with contextlib.suppress(AttributeError):  # a derived value (e.g. a read-only head_dim property)
            setattr(text, key, value)
    return model_config


def _build_tiny(name: str, out_dir: str, *, auto_class, revision=None, trust_remote_code=False, **config_kwargs):
    """Save a tiny random ``auto_class`` model with ``name``'s architecture, and ``name``'s tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    model = None
    for layers_only in (False, True):
        config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code,
                                            **config_kwargs)
        torch.manual_seed(0)
        try:
            shrink_config(config, layers_only=layers_only)
            model = auto_class.from_config(config, trust_remote_code=trust_remote_code, dtype=torch.float32)
            break
        except Exception:
            if layers_only:
                raise
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    text = model.config.get_text_config()
    return {"architecture": type(model).__name__, "layers": text.num_hidden_layers,
            "hidden_size": getattr(text, "hidden_size", None), "vocab_size": getattr(text, "vocab_size", None),
            "parameters": sum(p.numel() for p in model.parameters())}


def build_preflight_model(config: TrainingConfig, out_dir: str) -> dict:
    from transformers import AutoModelForCausalLM

    m = config.model
    return _build_tiny(m.base_model, out_dir, auto_class=AutoModelForCausalLM, revision=m.revision,
                       trust_remote_code=m.trust_remote_code)


def build_preflight_reward_model(config: TrainingConfig, out_dir: str) -> dict:
    from transformers import AutoModelForSequenceClassification

    source = config.training.rlhf.reward_model or config.model.base_model  # a judge: the base's architecture
    return _build_tiny(source, out_dir, auto_class=AutoModelForSequenceClassification,
                       trust_remote_code=config.model.trust_remote_code, num_labels=1)


def _rows_needed(config: TrainingConfig, steps: int) -> int:
    t, d = config.training, config.data
    train = steps * t.batch_size * t.gradient_accumulation_steps
    return math.ceil(train / (1 - d.eval_split)) + 1


def _write_rows(path: str, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def preflight_config(config: TrainingConfig, *, model_dir: str, data_path: str, steps: int,
                     reward_dir: str | None, notes: list[str]) -> TrainingConfig:
    """The configuration the CPU run trains with: tiny model, few steps, float32, one process, no predictions."""
    from trainer.validate import bitsandbytes_available

    t = config.training
    training: dict = {"max_steps": steps, "fp16": False, "bf16": False, "gpu_count": 1, "eval_steps": None,
                      "save_steps": None, "logging_steps": 1}
    if t.fp16 or t.bf16:
        notes.append("fp16/bf16 off: the CPU run trains in float32")
    if t.gpu_count > 1:
        notes.append(f"one process instead of training.gpu_count={t.gpu_count}")
    if t.quantization.bits and not bitsandbytes_available():
        training["quantization"] = t.quantization.model_copy(update={"bits": None})
        notes.append("quantization off: bitsandbytes cannot be imported on this machine")
    if reward_dir and t.rlhf.judge_url:
        training["rlhf"] = t.rlhf.model_copy(update={
            "reward_model": reward_dir, "judge_url": None, "judge_model": None, "judge_api_key_env": None,
            "judge_api_key_secret": None})
        notes.append("the judge is not called from here: a tiny random reward model stands in for it")
    elif reward_dir:
        training["rlhf"] = t.rlhf.model_copy(update={"reward_model": reward_dir})
        notes.append("the reward model is a tiny random one with the same architecture and tokenizer")
    if config.model.device_map == "cuda" or config.model.torch_dtype not in ("auto", "float32"):
        notes.append("the CPU run loads the model in float32 on the CPU")
    return config.model_copy(update={
        "model": config.model.model_copy(update={"base_model": model_dir, "revision": None, "device_map": "cpu",
                                                 "torch_dtype": "auto"}),
        "data": config.data.model_copy(update={"train_path": data_path, "dataset_id": None, "max_samples": None}),
        "training": t.model_copy(update=training),
        "predictions": config.predictions.model_copy(update={"enabled": False}),
    })


def run_preflight(
    config: TrainingConfig,
    dataset_path: str,
    dataset_format: DataFormat | str,
    *,
    steps: int = 3,
    work_dir: str,
    printer: Callable[[str], None] = print,
) -> PreflightReport:
    """Check, render and train ``steps`` steps on a tiny copy of the base model; never raises for a job error."""
    from trainer.data import load_rows, prepare_data
    from trainer.modeling import load_tokenizer
    from trainer.reporter import MetricsReporter
    from trainer.train import run
    from trainer.validate import check_spec

    started = time.monotonic()
    fmt = DataFormat(dataset_format)
    report = PreflightReport(ok=False, method=config.training.method.value)
    timings = report.timings
    phase_start = started

    def lap(name: str) -> None:
        nonlocal phase_start
        now = time.monotonic()
        timings[name] = round(now - phase_start, 3)
        phase_start = now

    os.makedirs(work_dir, exist_ok=True)
    spec = JobSpec(job_id=PREFLIGHT_JOB_ID, config=config, dataset_path=dataset_path, dataset_format=fmt,
                   output_dir=os.path.join(work_dir, "full"))
    try:
        check_spec(spec, check_hardware=False)
        lap("check_s")
        data = prepare_data(spec, load_tokenizer(config))
        rows = load_rows(dataset_path, fmt)[: config.data.max_samples][: _rows_needed(config, steps)]
        small_data = _write_rows(os.path.join(work_dir, "data.jsonl"), rows)
        printer(f"[preflight] data: {data.train_count + data.eval_count} rows render; training on {len(rows)}")
        lap("data_s")
        model_dir = os.path.join(work_dir, "model")
        report.model = build_preflight_model(config, model_dir)
        reward_dir = None
        if config.training.method is Method.RLHF:
            reward_dir = os.path.join(work_dir, "reward-model")
            build_preflight_reward_model(config, reward_dir)
        printer(f"[preflight] tiny {report.model['architecture']}: {report.model['parameters']} parameters")
        lap("build_model_s")
        small = preflight_config(config, model_dir=model_dir, data_path=small_data, steps=steps,
                                 reward_dir=reward_dir, notes=report.notes)
        small_spec = JobSpec(job_id=PREFLIGHT_JOB_ID, config=small, dataset_path=small_data, dataset_format=fmt,
                             output_dir=os.path.join(work_dir, "out"))
        reporter = MetricsReporter(None, PREFLIGHT_JOB_ID, None, os.path.join(work_dir, "metrics-spool.jsonl"))
        try:
            result = run(small_spec, reporter=reporter, printer=printer)
        finally:
            reporter.close(timeout=1.0)
        lap("train_s")
        report.ok = result.status == "completed"
        report.steps, report.final_loss = result.global_step, result.final_loss
        report.train_samples, report.eval_samples = result.train_samples, result.eval_samples
    except Exception as exc:
        report.error_type, report.error_message, report.error_field = describe_failure(exc)
        printer(f"[preflight] failed: {report.error_type}: {report.error_message}")
    timings["total_s"] = round(time.monotonic() - started, 3)
    return report


def _config_error(exc: ValidationError) -> PreflightReport:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    return PreflightReport(ok=False, method="unknown", error_type="ValidationError", error_field=field,
                           error_message=f"{field}: {first['msg']}" if field else first["msg"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.preflight",
                                     description="Try a training configuration for a few steps on the CPU.")
    parser.add_argument("--config", required=True, help="TrainingConfig JSON file")
    parser.add_argument("--data", required=True, help="JSONL data set")
    parser.add_argument("--format", required=True, choices=[f.value for f in DataFormat])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--work-dir", help="scratch folder (a temporary one, removed after, when unset)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line at the end")
    args = parser.parse_args(argv)

    progress = sys.stderr if args.json else sys.stdout

    def printer(line: str) -> None:
        print(line, file=progress, flush=True)

    try:
        with open(args.config, encoding="utf-8") as f:
            config = TrainingConfig.model_validate_json(f.read())
    except ValidationError as exc:
        report = _config_error(exc)
    except OSError as exc:
        report = PreflightReport(ok=False, method="unknown", error_type=type(exc).__name__,
                                 error_message=f"cannot read the config {args.config}: {exc}")
    else:
        with contextlib.ExitStack() as stack:
            work_dir = args.work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="tunefleet-preflight-"))
            if args.json:
                stack.enter_context(contextlib.redirect_stdout(sys.stderr))
            report = run_preflight(config, args.data, args.format, steps=args.steps, work_dir=work_dir,
                                   printer=printer)
    if args.json:
        print(report.model_dump_json(), flush=True)
    else:
        verdict = "ok" if report.ok else f"{report.error_type} ({report.error_field}): {report.error_message}"
        print(f"[preflight] {verdict}; {json.dumps(report.timings)}", flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

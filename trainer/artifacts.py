"""What a finished job leaves in ``spec.output_dir``.

* ``adapter/``: the LoRA adapter (``adapter_config.json``, ``adapter_model.safetensors``) and the tokenizer;
  ``model/`` instead when LoRA is disabled (full fine-tune).
* ``training_args.json``: the SFTConfig the trainer ran with.
* ``metadata.json``: see ``build_metadata``.
* ``result.json``: the TrainerResult, written by ``python -m trainer`` whatever happens.
* ``checkpoints/``: trainer checkpoints (for ``resume_from_checkpoint``).
* ``metrics-spool.jsonl``: metric batches not (yet) delivered to ingest.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime

from shared.jobspec import JobSpec, TrainerResult

ADAPTER_DIR = "adapter"
FULL_MODEL_DIR = "model"
TRAINING_ARGS = "training_args.json"
METADATA = "metadata.json"
RESULT = "result.json"
CHECKPOINTS_DIR = "checkpoints"
SPOOL = "metrics-spool.jsonl"


def write_json(path: str, data: dict) -> None:
    """Write atomically (temporary file, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def write_result(output_dir: str, result: TrainerResult) -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESULT)
    write_json(path, result.model_dump(mode="json"))
    return path


def save_model(trainer, tokenizer, output_dir: str, *, lora: bool) -> str:
    """Save the adapter (or the full model) with the tokenizer, and the training arguments; return its path."""
    target = os.path.join(output_dir, ADAPTER_DIR if lora else FULL_MODEL_DIR)
    trainer.model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    with open(os.path.join(output_dir, TRAINING_ARGS), "w", encoding="utf-8") as f:
        f.write(trainer.args.to_json_string())
    return target


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    return versions


def build_metadata(spec: JobSpec, result: TrainerResult, *, target_modules, summary: dict) -> dict:
    cfg = spec.config
    lora = cfg.training.lora
    return {
        "job_id": spec.job_id,
        "attempt": spec.attempt,
        "name": cfg.name,
        "base_model": cfg.model.base_model,
        "revision": cfg.model.revision,
        "method": cfg.training.method.value,
        "dataset_format": spec.dataset_format.value,
        "lora": {
            "enabled": lora.enabled,
            "r": lora.r,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "target_modules": target_modules,
        },
        "quantization_bits": cfg.training.quantization.bits,
        "status": result.status,
        "final_loss": result.final_loss,
        "final_eval_loss": result.final_eval_loss,
        "global_step": result.global_step,
        "train_samples": result.train_samples,
        "eval_samples": result.eval_samples,
        "training_seconds": result.training_seconds,
        "adapter_path": result.adapter_path,
        "train_summary": {k: v for k, v in summary.items() if isinstance(v, int | float)},
        "libraries": library_versions(),
        "finished_at": datetime.now(UTC).isoformat(),
    }


def write_metadata(output_dir: str, metadata: dict) -> str:
    path = os.path.join(output_dir, METADATA)
    write_json(path, metadata)
    return path

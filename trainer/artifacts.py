"""What a finished job leaves in ``spec.output_dir``.

* ``adapter/``: the LoRA adapter (``adapter_config.json``, ``adapter_model.safetensors``) and the tokenizer;
  ``model/`` instead when LoRA is disabled (full fine-tune).
* ``merged/``: with ``training.merge_adapter``, the base model with the adapter merged in (safetensors) and the
  tokenizer, loadable without peft. The base is loaded unquantized (in the QLoRA compute dtype) for the merge.
* ``training_args.json``: the TRL config the trainer ran with.
* ``metadata.json``: see ``build_metadata``.
* ``result.json``: the TrainerResult, written by ``python -m trainer`` whatever happens; its ``checkpoint_path``
  is the latest checkpoint, which a retry passes as ``resume_from_checkpoint``.
* ``checkpoints/checkpoint-N/``: trainer checkpoints with optimizer, scheduler and RNG state (the last two
  kept; with ``training.keep_best_checkpoints`` N, the N of lowest eval loss and the last).
* ``metrics-spool.jsonl``: metric batches not (yet) delivered to ingest.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime

from shared.config import TrainingConfig
from shared.jobspec import JobSpec, TrainerResult

ADAPTER_DIR = "adapter"
FULL_MODEL_DIR = "model"
MERGED_DIR = "merged"
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


def save_merged(config: TrainingConfig, adapter_dir: str, output_dir: str) -> str:
    """Merge the adapter in ``adapter_dir`` into a fresh copy of the base model; save it as safetensors."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.modeling import model_dtype

    m = config.model
    base = AutoModelForCausalLM.from_pretrained(
        m.base_model, revision=m.revision, trust_remote_code=m.trust_remote_code, dtype=model_dtype(config)
    )
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    target = os.path.join(output_dir, MERGED_DIR)
    merged.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(target)
    return target


def latest_checkpoint(output_dir: str) -> str | None:
    """The ``checkpoints/checkpoint-N`` folder with the highest N that holds a trainer state; None without one."""
    folder = os.path.join(output_dir, CHECKPOINTS_DIR)
    best: tuple[int, str] | None = None
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            step = name.removeprefix("checkpoint-")
            if step.isdigit() and os.path.isfile(os.path.join(path, "trainer_state.json")):
                best = max(best or (-1, ""), (int(step), path))
    return best[1] if best else None


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    return versions


def build_metadata(spec: JobSpec, result: TrainerResult, *, target_modules, summary: dict, **extra) -> dict:
    """What a person or the registry needs to know about the trained model; ``extra`` is added as is."""
    cfg = spec.config
    t = cfg.training
    lora = t.lora
    rlhf = t.rlhf.model_dump() if t.method.value == "rlhf" else None
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
        "quantization_bits": t.quantization.bits,
        "quantization": t.quantization.model_dump() if t.quantization.bits else None,
        "max_seq_length": cfg.model.max_seq_length,
        "rlhf": rlhf,
        "status": result.status,
        "final_loss": result.final_loss,
        "final_eval_loss": result.final_eval_loss,
        "global_step": result.global_step,
        "train_samples": result.train_samples,
        "eval_samples": result.eval_samples,
        "training_seconds": result.training_seconds,
        "adapter_path": result.adapter_path,
        "merged_path": result.merged_path,
        "checkpoint_path": result.checkpoint_path,
        "train_summary": {k: v for k, v in summary.items() if isinstance(v, int | float)},
        "libraries": library_versions(),
        "finished_at": datetime.now(UTC).isoformat(),
        **extra,
    }


def write_metadata(output_dir: str, metadata: dict) -> str:
    path = os.path.join(output_dir, METADATA)
    write_json(path, metadata)
    return path

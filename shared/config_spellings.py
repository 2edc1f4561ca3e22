"""The specification's spellings of a TrainingConfig, turned into TuneFleet's own before validation.

The specification (its ``TrainingConfig`` interface and its "Default Configurations") writes ``model`` as a plain
hub id or as ``{name, device_map, torch_dtype}``, LoRA as ``training.lora_r`` / ``lora_alpha`` / ``lora_dropout`` or
a peft-style ``training.lora_config``, epochs as ``num_epochs``, the optimizer as ``optim``, bitsandbytes' own
``load_in_4bit`` / ``load_in_8bit`` / ``bnb_4bit_*`` names under ``training.quantization``, and
``predictions.sample_frequency``. Each is moved to its place in TuneFleet's sections (``shared.config``), where it is
validated and stored; a setting written in two spellings at once is refused, naming both. The metadata the
interface lists (``id``, ``user_id``, ``created_at``, ``updated_at``) is the server's to set and is dropped.
"""

from __future__ import annotations

import copy
from typing import Any

#: The specification's two "Default Configurations", verbatim (the API's examples and the tests' bodies).
DOCUMENTED_DEFAULTS: dict[str, dict[str, Any]] = {
    "small": {
        "name": "Qwen2.5-0.5B-fine-tune",
        "model": "Qwen/Qwen2.5-0.5B",
        "training": {"method": "sft", "num_epochs": 3, "learning_rate": 5e-4, "batch_size": 32,
                     "gradient_accumulation_steps": 1, "lora_r": 8, "lora_alpha": 16},
        "predictions": {"enabled": True, "sample_count": 5, "sample_frequency": "epoch"},
    },
    "large": {
        "name": "Llama-2-70B-fine-tune",
        "model": "meta-llama/Llama-2-70b-hf",
        "training": {"method": "sft", "num_epochs": 2, "learning_rate": 2e-4, "batch_size": 4,
                     "gradient_accumulation_steps": 4, "lora_r": 64, "lora_alpha": 128,
                     "quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}},
        "predictions": {"enabled": True, "sample_count": 10, "sample_frequency": "eval"},
    },
}

#: The interface's metadata: set by the server, not by the configuration.
METADATA = ("id", "user_id", "created_at", "updated_at")

#: Per section: the document's key → TuneFleet's key (a dotted path below the section for nested ones).
RENAMES: dict[str, dict[str, str]] = {
    "model": {"name": "base_model"},
    "training": {"num_epochs": "epochs", "optim": "optimizer", "lora_r": "lora.r", "lora_alpha": "lora.alpha",
                 "lora_dropout": "lora.dropout"},
    "training.quantization": {"bnb_4bit_quant_type": "quant_type", "bnb_4bit_compute_dtype": "compute_dtype",
                              "bnb_4bit_use_double_quant": "double_quant"},
    "predictions": {"sample_frequency": "frequency"},
}
#: peft's LoraConfig names in ``training.lora_config`` → ``training.lora``.
LORA_CONFIG = {"r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "target_modules",
               "bias": "bias"}


class SpellingConflict(ValueError):
    """One setting given twice, in two spellings."""


def canonical(data: Any) -> Any:
    """``data`` with the document's spellings moved to TuneFleet's; anything else is left for validation."""
    if not isinstance(data, dict):
        return data
    data = {k: copy.deepcopy(v) for k, v in data.items() if k not in METADATA}
    if isinstance(data.get("model"), str):
        data["model"] = {"base_model": data["model"]}
    placed: dict[str, str] = {}  # TuneFleet's path → the spelling that set it
    for section, renames in RENAMES.items():
        body = _section(data, section)
        if body is None:
            continue
        for old, new in renames.items():
            if old in body:
                _place(data, f"{section}.{new}", body.pop(old), f"{section}.{old}", placed)
    training = _section(data, "training")
    if training is not None and "lora_config" in training:
        _lora_config(data, training.pop("lora_config"), placed)
    quantization = _section(data, "training.quantization")
    if quantization is not None:
        for flag, bits in (("load_in_4bit", 4), ("load_in_8bit", 8)):
            if flag not in quantization:
                continue
            value = quantization.pop(flag)
            if value is True:
                _place(data, "training.quantization.bits", bits, f"training.quantization.{flag}", placed)
            elif value is not False:
                raise ValueError(f"training.quantization.{flag} must be true or false")
    return data


def _lora_config(data: dict, given: Any, placed: dict[str, str]) -> None:
    if not isinstance(given, dict):
        raise ValueError("training.lora_config must be an object (r, lora_alpha, lora_dropout, target_modules, bias)")
    for key, value in given.items():
        if key == "task_type":
            if value not in ("CAUSAL_LM", None):
                raise ValueError(f"training.lora_config.task_type {value!r}: TuneFleet trains causal LMs (CAUSAL_LM)")
            continue
        if key not in LORA_CONFIG:
            known = ", ".join(sorted([*LORA_CONFIG, "task_type"]))
            raise ValueError(f"training.lora_config.{key} is not a LoRA setting TuneFleet knows ({known})")
        _place(data, f"training.lora.{LORA_CONFIG[key]}", value, f"training.lora_config.{key}", placed)


def _section(data: dict, dotted: str) -> dict | None:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _place(data: dict, dotted: str, value: Any, spelling: str, placed: dict[str, str]) -> None:
    """Set ``dotted`` to ``value`` (written as ``spelling``), refusing a setting that is already given."""
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{'.'.join(parents)} must be an object")
        node = child
    if leaf in node or dotted in placed:
        first = placed.get(dotted, dotted)
        raise SpellingConflict(f"{first} and {spelling} are the same setting written twice; keep one of them")
    node[leaf] = value
    placed[dotted] = spelling

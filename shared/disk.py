"""How much disk a training job needs on a rented machine: the model download, its checkpoints, a merged copy,
and the trainer's venv. The model's size is read from its name (``Qwen2.5-7B``, ``Mixtral-8x7B``); a model whose
name tells nothing gets the default."""

from __future__ import annotations

import math
import re

from shared.config import TrainingConfig

DEFAULT_VOLUME_GB = 50
#: The trainer's venv, pip's cache and the Hugging Face cache's overhead.
SOFTWARE_GB = 15
_SIZE = re.compile(r"(?:(\d+)x)?(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])")


def model_billions(base_model: str) -> float | None:
    """Parameters in billions, from the last part of a model's name; None when the name does not say."""
    name = base_model.rstrip("/").rsplit("/", 1)[-1]
    found = _SIZE.findall(name)
    if not found:
        return None
    experts, size = found[-1]
    return float(size) * (int(experts) if experts else 1)


def volume_gb(config: TrainingConfig) -> int:
    """Disk for the model at 16 bits, its checkpoints (two kept) and a merged copy, plus the software."""
    billions = model_billions(config.model.base_model)
    if billions is None:
        return DEFAULT_VOLUME_GB
    weights = 2.0 * billions
    t = config.training
    # LoRA checkpoints hold the adapter and its optimizer state; a full fine-tune's hold fp32 weights and Adam.
    checkpoint = 0.05 * weights if t.lora.enabled else 16.0 * billions
    merged = weights if t.merge_adapter else 0.0
    return max(DEFAULT_VOLUME_GB, math.ceil(weights + 2 * checkpoint + merged + SOFTWARE_GB))

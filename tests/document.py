"""Bodies copied from the specification (../shared/spec), for tests that check TuneFleet takes them as written."""

from __future__ import annotations

from shared.config_spellings import DOCUMENTED_DEFAULTS

#: The specification's two "Default Configurations", verbatim (kept once, in shared.config_spellings).
SMALL = DOCUMENTED_DEFAULTS["small"]
LARGE = DOCUMENTED_DEFAULTS["large"]


def interface_config(model: str, train_path: str) -> dict:
    """A configuration that writes every field of the specification's ``TrainingConfig`` interface in its own
    spelling (metadata included, which the server sets), sized to train in seconds on a tiny model."""
    return {
        "id": "cfg_abc123", "user_id": "user_123", "name": "spec-contract",
        "created_at": "2025-12-01T10:00:00Z", "updated_at": "2025-12-01T10:00:00Z",
        "model": {"name": model, "device_map": "cpu", "torch_dtype": "float32"},
        "data": {"train_path": train_path, "eval_split": 0.2, "max_samples": 40},
        "training": {
            "method": "sft", "num_epochs": 1, "learning_rate": 5e-4, "batch_size": 4,
            "gradient_accumulation_steps": 1, "max_steps": 6, "warmup_steps": 0, "weight_decay": 0.0,
            "optim": "adamw_torch", "gradient_checkpointing": False, "bf16": False, "fp16": False,
            "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
            "lora_config": {"target_modules": ["q_proj", "v_proj"]},
            "quantization": {"load_in_4bit": False},
        },
        "predictions": {"enabled": True, "sample_count": 2, "sample_frequency": "steps", "step_interval": 3,
                        "max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0},
    }


#: The specification's RunPod deploy body (``Step 2.3``), with a GPU the sandbox has and no configuration id yet.
RUNPOD_DEPLOY = {"gpu_type": "NVIDIA RTX A4000", "gpu_count": 1, "volume_size_gb": 50, "budget_limit": 100}

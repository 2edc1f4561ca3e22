"""Bodies copied from the specification (../shared/spec), for tests that check TuneFleet takes them as written."""

from __future__ import annotations

#: The specification's two "Default Configurations", verbatim.
SMALL = {
    "name": "Qwen2.5-0.5B-fine-tune",
    "model": "Qwen/Qwen2.5-0.5B",
    "training": {"method": "sft", "num_epochs": 3, "learning_rate": 5e-4, "batch_size": 32,
                 "gradient_accumulation_steps": 1, "lora_r": 8, "lora_alpha": 16},
    "predictions": {"enabled": True, "sample_count": 5, "sample_frequency": "epoch"},
}
LARGE = {
    "name": "Llama-2-70B-fine-tune",
    "model": "meta-llama/Llama-2-70b-hf",
    "training": {"method": "sft", "num_epochs": 2, "learning_rate": 2e-4, "batch_size": 4,
                 "gradient_accumulation_steps": 4, "lora_r": 64, "lora_alpha": 128,
                 "quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}},
    "predictions": {"enabled": True, "sample_count": 10, "sample_frequency": "eval"},
}

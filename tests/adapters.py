"""LoRA adapters for the serving tests, made with peft. ``init_lora_weights=False`` gives random B matrices, so the
adapter changes the answers (peft's default init leaves them equal to the base model's)."""

from __future__ import annotations

from pathlib import Path


def make_lora_adapter(base: str | Path, out: str | Path, *, seed: int = 1, r: int = 8, **lora) -> str | Path:
    """Save an adapter of ``base`` (with the base's tokenizer) into ``out``; returns ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=lora.pop("target_modules", ["q_proj", "v_proj"]),
                        init_lora_weights=False, task_type="CAUSAL_LM", **lora)
    get_peft_model(model, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out

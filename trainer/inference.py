"""Load a base model with a trained adapter and answer a prompt (the demo and smoke checks use it)."""

from __future__ import annotations

from shared.config import PredictionsSection


def generate_with_adapter(base_model: str, adapter_path: str, prompt: str, *, max_new_tokens: int = 32,
                          temperature: float = 0.0) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.callbacks import generate

    tokenizer = AutoTokenizer.from_pretrained(adapter_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), adapter_path)
    return generate(model, tokenizer, prompt,
                    PredictionsSection(max_new_tokens=max_new_tokens, temperature=temperature))

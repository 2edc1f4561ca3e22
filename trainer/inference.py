"""Load a base model with a trained adapter and answer a prompt (the demo and smoke checks use it)."""

from __future__ import annotations

import warnings

from shared.config import PredictionsSection


def generate_with_adapter(base_model: str, adapter_path: str, prompt: str, *, max_new_tokens: int = 32,
                          temperature: float = 0.0) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from trainer.callbacks import generate

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(adapter_path)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), adapter_path)
        return generate(model, tokenizer, prompt,
                        PredictionsSection(max_new_tokens=max_new_tokens, temperature=temperature))

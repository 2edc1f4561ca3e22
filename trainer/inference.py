"""Load a base model with a trained adapter and answer a prompt (the demo and smoke checks use it)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

from shared.config import PredictionsSection


def answer_with_adapter(base_model: str, adapter_path: str, render_prompt: Callable[[object], str], *,
                        max_new_tokens: int = 32, temperature: float = 0.0) -> str:
    """Generate from the base model with the adapter; ``render_prompt(tokenizer)`` builds the prompt the way
    training rendered it (the tokenizer saved with the adapter carries the chat template)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from trainer.callbacks import generate

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(adapter_path)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), adapter_path)
        return generate(model, tokenizer, render_prompt(tokenizer),
                        PredictionsSection(max_new_tokens=max_new_tokens, temperature=temperature))

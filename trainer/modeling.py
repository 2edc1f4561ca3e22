"""Load the base model and tokenizer, and build the LoRA configuration.

``config.model.base_model`` is a hub id or a local folder: both go through ``from_pretrained``.
"""

from __future__ import annotations

import os

from shared.config import LoraSection, TrainingConfig
from trainer.errors import ConfigRefused

#: Attention projection names by architecture family, most specific first; the first family whose
#: names all appear among the model's linear layers is used when ``lora.target_modules`` is None.
ATTENTION_PROJECTIONS: list[list[str]] = [
    ["q_proj", "v_proj"],  # Llama, Mistral, Qwen, Gemma, Phi-3 style
    ["qkv_proj"],
    ["query_key_value"],  # GPT-NeoX, Falcon, Bloom
    ["c_attn"],  # GPT-2
    ["Wqkv"],  # MPT, ModernBERT
    ["q", "v"],  # T5
    ["query", "value"],  # BERT style
]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def use_cuda(config: TrainingConfig) -> bool:
    """Whether the job trains on a GPU, as ``model.device_map`` asks: auto takes one when there is one."""
    wanted = config.model.device_map
    if wanted == "cpu":
        return False
    available = cuda_available()
    if wanted == "cuda" and not available:
        raise ConfigRefused("model.device_map", "model.device_map='cuda' but this machine has no GPU: deploy on a GPU "
                                                "provider, or set model.device_map to 'auto' or 'cpu'")
    return available


def load_tokenizer(config: TrainingConfig):
    from transformers import AutoTokenizer

    m = config.model
    tokenizer = AutoTokenizer.from_pretrained(m.base_model, revision=m.revision, trust_remote_code=m.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def model_dtype(config: TrainingConfig):
    """The dtype the base weights load in: ``model.torch_dtype`` when set; else the quantization compute dtype, else
    bf16/fp16 when set, else fp32."""
    import torch

    t = config.training
    if config.model.torch_dtype != "auto":
        return _dtype(config.model.torch_dtype)
    if t.quantization.bits:
        return _dtype(t.quantization.compute_dtype)
    return torch.bfloat16 if t.bf16 else torch.float16 if t.fp16 else torch.float32


def quantization_config(config: TrainingConfig):
    """The BitsAndBytesConfig for ``training.quantization``; None when it is off."""
    q = config.training.quantization
    if not q.bits:
        return None
    from transformers import BitsAndBytesConfig

    if q.bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_compute_dtype=_dtype(q.compute_dtype),
            bnb_4bit_use_double_quant=q.double_quant,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_model(config: TrainingConfig, *, attn_implementation: str | None = None):
    """The base causal LM; quantized through bitsandbytes when ``training.quantization.bits`` is set.

    Quantized models load on this process's CUDA device (``LOCAL_RANK``), or on the CPU without one
    (bitsandbytes >= 0.48 runs 4-bit and 8-bit layers there). ``attn_implementation`` is passed through (None: the
    transformers default).
    """
    from transformers import AutoModelForCausalLM

    m, t = config.model, config.training
    kwargs: dict = {"revision": m.revision, "trust_remote_code": m.trust_remote_code, "dtype": model_dtype(config)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    quantization = quantization_config(config)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0")) if use_cuda(config) else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(m.base_model, **kwargs)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing)
    return model


def linear_module_names(model) -> set[str]:
    """The last name component of every linear layer (``model.layers.0.self_attn.q_proj`` -> ``q_proj``)."""
    import torch

    names = set()
    for name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in {"Linear4bit", "Linear8bitLt"}
        if is_linear or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return names


def default_target_modules(model) -> list[str] | str:
    """The model's attention projections; "all-linear" when none of the known names fit."""
    present = linear_module_names(model)
    for family in ATTENTION_PROJECTIONS:
        if all(name in present for name in family):
            return list(family)
    return "all-linear"


def build_lora_config(lora: LoraSection, model):
    from peft import LoraConfig

    targets = lora.target_modules if lora.target_modules is not None else default_target_modules(model)
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias=lora.bias,
        use_dora=lora.use_dora,
        task_type="CAUSAL_LM",
    )


def model_skeleton(config: TrainingConfig):
    """The base model's module tree on the meta device, from its config alone: no weights are read or allocated."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    m = config.model
    model_config = AutoConfig.from_pretrained(m.base_model, revision=m.revision, trust_remote_code=m.trust_remote_code)
    with init_empty_weights(include_buffers=True):
        return AutoModelForCausalLM.from_config(model_config, trust_remote_code=m.trust_remote_code)

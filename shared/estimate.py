"""What a training job needs before it runs: peak GPU memory, tokens, and time (so cost, at a GPU's price) per GPU,
from the base model's ``config.json``, the configuration and the data set's statistics. Pure arithmetic: nothing is
loaded or run.

Memory (bytes, one GPU, the trainer's settings):
- weights: every parameter at the dtype the trainer loads it in (``weight_bytes``: fp32 unless ``torch_dtype`` or
  bf16/fp16 say otherwise), or, under QLoRA, the decoder's linear layers at ``bits`` (plus bitsandbytes' block
  constants: one fp32 absmax per 64 weights, about 0.127 bits a weight with double quantization) while
  embeddings, norms and ``lm_head`` are cast to fp32 by peft's ``prepare_model_for_kbit_training``;
- LoRA: r x (in + out) parameters per targeted linear layer (q and v by default, as the trainer picks), in fp32,
  with their gradients and Adam's two moments (16 bytes a parameter; SGD keeps none); a full fine-tune keeps
  gradients and AdamW's moments at the weights' dtype (fp32 moments with ``paged_adamw_32bit``);
- activations per batch: the trainer packs each batch padding-free (SFT), so a batch holds its rows' real tokens;
  other methods pad to the longest row. Per token and layer a Llama-style decoder keeps its layer inputs, q/k/v,
  the attention output and the MLP's gate, up and activation (``(8h + 2kv + 4i)`` values, plus LoRA dropout's copy
  of each targeted layer's input) with SDPA/flash attention (no seq² term), at 16 bits under autocast; with
  gradient checkpointing only each layer's input is kept, plus one layer recomputed. Memory is sized for the largest
  batch: one longest row with average ones when packed;
- logits: tokens x vocabulary at 16 bits, their fp32 copy for the loss and its gradient (10 bytes a value);
- the CUDA context and allocator reserve are not in ``torch.cuda.max_memory_allocated``; ``fits`` adds them.

Time: FLOPs per token of 4 x frozen + 6 x trainable parameters (forward 2, backward 2 through the inputs, 2 more
for weight gradients; under LoRA the model is frozen and its adapters are the trainable ones), plus 2 x all with
gradient checkpointing (the forward again), over the GPU's dense 16-bit peak at ``EFFICIENCY`` of it (model FLOPs
utilisation of a single-GPU LoRA run; stated, not measured here).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.config import Method, TrainingConfig
from shared.dataformats import CHARS_PER_TOKEN

GIB = 1024**3
#: Share of the GPU's dense 16-bit peak that a fine-tuning step sustains (model FLOPs utilisation).
EFFICIENCY = 0.35
#: What a GPU holds besides PyTorch's allocations: the CUDA context and kernels, and the caching allocator's slack.
CUDA_CONTEXT_BYTES = 0.6 * GIB
ALLOCATOR_SLACK = 0.10
#: What LoRA targets when the configuration names none: the trainer's default for Llama/Qwen-style models
#: (``trainer.modeling.ATTENTION_PROJECTIONS``).
DEFAULT_TARGETS = ("q_proj", "v_proj")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


class ModelConfigError(ValueError):
    """A ``config.json`` that does not describe a decoder this estimator knows."""


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a decoder-only transformer that memory and compute follow from."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    head_dim: int
    attention_bias: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        try:
            hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
            heads = int(config["num_attention_heads"])
            intermediate, vocab = int(config["intermediate_size"]), int(config["vocab_size"])
            kv = int(config.get("num_key_value_heads") or heads)
            head_dim = int(config.get("head_dim") or hidden // heads)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise ModelConfigError(f"config.json lacks or garbles {exc} (hidden_size, num_hidden_layers, "
                                   "num_attention_heads, intermediate_size, vocab_size)") from exc
        if min(hidden, layers, heads, intermediate, vocab, kv, head_dim) <= 0:
            raise ModelConfigError("config.json gives a size of zero or less")
        # Qwen2 puts biases on q/k/v without saying so in config.json; others say attention_bias.
        bias = bool(config.get("attention_bias", config.get("model_type") == "qwen2"))
        return cls(hidden=hidden, intermediate=intermediate, layers=layers, heads=heads, kv_heads=kv, vocab=vocab,
                   tied_embeddings=bool(config.get("tie_word_embeddings", False)), head_dim=head_dim,
                   attention_bias=bias)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer, by its module name."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden), "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden)}

    @property
    def linear_params_per_layer(self) -> int:
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.attention_bias else 0
        return sum(i * o for i, o in self.linear_shapes().values()) + bias

    @property
    def embedding_params(self) -> int:
        """Input embeddings and the output head (once when tied)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.layers * self.linear_params_per_layer + self.embedding_params + norms


@dataclass
class MemoryEstimate:
    """Peak bytes of one training step on one GPU, by part."""

    weights: float
    trainable: float
    activations: float
    logits: float
    params: int
    trainable_params: int
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        """What ``torch.cuda.max_memory_allocated`` would show."""
        return self.weights + self.trainable + self.activations + self.logits

    @property
    def needed(self) -> float:
        """What the GPU must have free: the peak with the allocator's slack and the CUDA context."""
        return self.peak * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT_BYTES

    def as_dict(self) -> dict[str, Any]:
        gib = {k: round(v / GIB, 3) for k, v in asdict(self).items() if isinstance(v, float)}
        return {**{f"{k}_gib": v for k, v in gib.items()}, "peak_gib": round(self.peak / GIB, 3),
                "needed_gib": round(self.needed / GIB, 3), "params": self.params,
                "trainable_params": self.trainable_params, "notes": self.notes}


def _targets(config: TrainingConfig) -> tuple[str, ...]:
    names = config.training.lora.target_modules
    if names is None:
        return DEFAULT_TARGETS
    if names == "all-linear":
        return ATTENTION + MLP
    return tuple(n for n in names if n in ATTENTION + MLP)


_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def weight_bytes(config: TrainingConfig) -> int:
    """Bytes of a weight as the trainer loads it (``trainer.modeling.model_dtype``): ``model.torch_dtype`` when set,
    else the quantization's compute dtype, else 16 bits with bf16/fp16, else fp32."""
    t = config.training
    if config.model.torch_dtype != "auto":
        return _BYTES[config.model.torch_dtype]
    if t.quantization.bits:
        return _BYTES[t.quantization.compute_dtype]
    return 2 if t.bf16 or t.fp16 else 4


def activation_bytes(config: TrainingConfig) -> int:
    """Bytes of an activation: 16 bits under bf16/fp16 autocast, else the weights' dtype."""
    t = config.training
    return 2 if t.bf16 or t.fp16 else weight_bytes(config)


def memory(shape: ModelShape, config: TrainingConfig, *, batch_tokens: int, row_tokens: int) -> MemoryEstimate:
    """Peak memory of a step over ``batch_tokens`` tokens in rows of at most ``row_tokens``."""
    t, notes = config.training, []
    word, act = weight_bytes(config), activation_bytes(config)
    bits = t.quantization.bits
    decoder_linear = shape.layers * shape.linear_params_per_layer
    rest = shape.params - decoder_linear
    if bits:
        block = 256 if t.quantization.double_quant else 64
        # peft's prepare_model_for_kbit_training (the trainer calls it) casts what is not quantized to fp32
        weights = decoder_linear * (bits / 8 + (4 / block if bits == 4 else 4 / 4096)) + rest * 4
        notes.append(f"decoder linear layers at {bits} bits; embeddings, norms and lm_head at fp32 (peft's "
                     "prepare_model_for_kbit_training)")
    else:
        weights = shape.params * word
    if t.lora.enabled:
        shapes = shape.linear_shapes()
        trainable_params = shape.layers * sum(t.lora.r * (shapes[n][0] + shapes[n][1]) for n in _targets(config))
        state = 8 if t.optimizer != "sgd" else 0  # Adam's two fp32 moments
        trainable = trainable_params * (4 + 4 + state)  # fp32 weights and gradients
    else:
        trainable_params = shape.params
        # gradients at the weights' dtype; torch's AdamW keeps its two moments at it too, paged_adamw_32bit at fp32
        moments = 0 if t.optimizer == "sgd" else 8 if t.optimizer == "paged_adamw_32bit" else 2 * word
        trainable = shape.params * (word + moments)
        notes.append("full fine-tune: gradients and optimizer states for every parameter")
    per_token_layer = 8 * shape.hidden + 2 * shape.kv_heads * shape.head_dim + 4 * shape.intermediate
    if t.lora.enabled and t.lora.dropout > 0:  # peft keeps the dropped-out input of each targeted layer
        shapes = shape.linear_shapes()
        per_token_layer += sum(shapes[n][0] for n in _targets(config))
    if t.gradient_checkpointing:
        acts = batch_tokens * (shape.layers * shape.hidden + per_token_layer) * act
        notes.append("gradient checkpointing: one layer's activations at a time")
    else:
        acts = batch_tokens * shape.layers * per_token_layer * act
    logits = batch_tokens * shape.vocab * 10
    del row_tokens  # attention runs through SDPA / flash kernels: no seq² buffer kept
    return MemoryEstimate(weights=float(weights), trainable=float(trainable), activations=float(acts),
                          logits=float(logits), params=shape.params, trainable_params=trainable_params, notes=notes)


@dataclass(frozen=True)
class DataShape:
    rows: int
    tokens_per_row: float
    longest_row: int


def data_shape(config: TrainingConfig, rows: int, stats: dict[str, Any]) -> DataShape:
    """Tokens per row from the upload's character statistics, cut at ``model.max_seq_length``."""
    limit = config.model.max_seq_length
    mean = float(stats.get("chars_mean") or 0) / CHARS_PER_TOKEN
    longest = float(stats.get("chars_max") or 0) / CHARS_PER_TOKEN
    used = min(rows, config.data.max_samples or rows)
    return DataShape(rows=used, tokens_per_row=min(max(mean, 1.0), limit),
                     longest_row=int(min(max(longest, 1.0), limit)))


def batch_tokens(config: TrainingConfig, data: DataShape) -> int:
    """Tokens in the largest micro-batch the trainer builds: packed without padding for SFT (one longest row with
    average ones), padded to the longest row otherwise (and twice the rows for preference pairs)."""
    t = config.training
    if t.method is Method.SFT and t.padding_free:
        return math.ceil(data.longest_row + (t.batch_size - 1) * data.tokens_per_row)
    pairs = 2 if t.method in (Method.DPO, Method.ORPO) else 1
    return t.batch_size * pairs * data.longest_row


def training_tokens(config: TrainingConfig, data: DataShape) -> int:
    """Tokens the run trains on: its steps x the effective batch, or epochs over the train split."""
    t = config.training
    per_step = t.batch_size * t.gradient_accumulation_steps * t.gpu_count * data.tokens_per_row
    if t.max_steps:
        return math.ceil(t.max_steps * per_step)
    train_rows = data.rows * (1.0 - config.data.eval_split)
    return math.ceil(t.epochs * train_rows * data.tokens_per_row)


def step_flops(shape: ModelShape, config: TrainingConfig, tokens: int, trainable_params: int) -> float:
    """FLOPs over ``tokens``: 2 a parameter forward, 2 backward through the inputs, 2 more for the weight gradients
    of trainable parameters (LoRA's are extra to the model's); the input embedding is a lookup, not a product."""
    matmul = shape.params - (0 if shape.tied_embeddings else shape.vocab * shape.hidden)
    frozen, trainable = (matmul, trainable_params) if config.training.lora.enabled else (0, matmul)
    flops = tokens * (4 * frozen + 6 * trainable)
    if config.training.gradient_checkpointing:
        flops += tokens * 2 * (frozen + trainable)  # the forward again
    return float(flops)


def fits(estimate: MemoryEstimate, vram_gib: float, gpus: int = 1) -> tuple[bool, str | None]:
    """Whether one of ``gpus`` GPUs of ``vram_gib`` holds the job (data-parallel: each holds a whole copy), and why
    not, naming what to change."""
    needed = estimate.needed / GIB
    if needed <= vram_gib:
        return True, None
    parts = {"weights": estimate.weights, "activations": estimate.activations + estimate.logits,
             "trainable state": estimate.trainable}
    largest = max(parts, key=parts.get)
    advice = {"weights": "quantize (training.quantization.bits 4 or 8) or take a GPU with more memory",
              "activations": "lower training.batch_size or model.max_seq_length, or turn on "
                             "training.gradient_checkpointing",
              "trainable state": "use LoRA (training.lora.enabled) or a smaller training.lora.r"}[largest]
    each = " each" if gpus > 1 else ""
    return False, (f"needs about {needed:.1f} GiB{each}, the GPU has {vram_gib:g} GiB; the most is {largest} "
                   f"({parts[largest] / GIB:.1f} GiB): {advice}")


@dataclass(frozen=True)
class GpuSpec:
    vram_gib: float
    tflops_16bit: float  # dense bf16/fp16 tensor throughput, without sparsity


#: Dense 16-bit tensor TFLOPS by GPU, from NVIDIA's datasheets (no sparsity; the P100 has no tensor cores), matched
#: against an offer's name and description in this order (the first pattern that matches wins).
TFLOPS_16BIT: list[tuple[re.Pattern[str], float]] = [(re.compile(p, re.IGNORECASE), t) for p, t in [
    (r"H200", 989), (r"H100.*(PCIe|pcie)", 756), (r"H100 NVL", 835), (r"H100", 989), (r"\bA100\b", 312),
    (r"L40S", 362), (r"\bL40\b", 181),
    (r"6000 Ada", 364), (r"A6000", 155), (r"\bA40\b", 150), (r"4090", 165), (r"A10G", 70), (r"\bA10\b", 125),
    (r"A5000", 111), (r"A4000", 77), (r"\bL4\b", 121), (r"\bT4\b", 65), (r"P100", 19),
]]


def gpu_spec(text: str, vram_gb: float | None) -> GpuSpec | None:
    """The spec of the GPU an offer names (``text``: its id and description), with the memory it states (GB); None
    when the GPU or its memory is unknown."""
    if not vram_gb:
        return None
    for pattern, tflops in TFLOPS_16BIT:
        if pattern.search(text.replace("_", " ")):
            return GpuSpec(vram_gb * 1e9 / GIB, tflops)
    return None


def hours(flops: float, gpu: GpuSpec, gpus: int = 1) -> float:
    """Wall-clock hours for ``flops`` on ``gpus`` of ``gpu`` at ``EFFICIENCY`` of their peak."""
    return flops / (gpus * gpu.tflops_16bit * 1e12 * EFFICIENCY) / 3600.0

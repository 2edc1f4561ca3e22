"""What a training job needs before it runs: peak GPU memory, tokens, and time (so cost, at a GPU's price) per GPU,
from the base model's ``config.json``, the configuration and the data set's statistics. Pure arithmetic: nothing is
loaded or run.

Memory (bytes, one GPU, the trainer's settings):
- weights: every parameter at the compute dtype (2 bytes at 16 bits, 4 at 32), or, under QLoRA, the linear layers
  of the decoder at ``bits`` (plus bitsandbytes' block constants: one fp32 absmax per 64 weights, or per 256 with
  double quantization) while embeddings, norms and ``lm_head`` stay at 16 bits;
- LoRA: r x (in + out) parameters per targeted linear layer, in fp32, with their gradients and Adam's two moments
  (16 bytes a parameter; SGD keeps none); a full fine-tune keeps fp32 master weights, gradients and Adam (16 bytes
  a parameter, mixed precision);
- activations per batch: the trainer packs each batch padding-free (SFT), so a batch holds its rows' real tokens;
  other methods pad to the longest row. Per token and layer a Llama-style decoder keeps its layer inputs, q/k/v,
  the attention output and the MLP's gate, up and activation (``(8h + 2kv + 4i)`` values) with SDPA/flash
  attention (no seq² term); with gradient checkpointing only each layer's input is kept, plus one layer recomputed;
- logits: tokens x vocabulary at 16 bits, their fp32 copy for the loss and its gradient (10 bytes a value);
- the CUDA context and allocator reserve are not in ``torch.cuda.max_memory_allocated``; ``fits`` adds them.

Time: 6 x parameters x tokens FLOPs (forward 2, backward 4; with LoRA the frozen weights still run forward and
backward through their inputs, which is why it is 6 x all parameters, less 2 x frozen for the weight gradients
LoRA does not compute: 4 x frozen + 6 x trainable), over the GPU's dense 16-bit peak at ``EFFICIENCY`` of it
(model FLOPs utilisation of a single-GPU LoRA run; stated, not measured here), plus a third more with gradient
checkpointing (one forward again).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.config import Method, TrainingConfig

GIB = 1024**3
#: Share of the GPU's dense 16-bit peak that a fine-tuning step sustains (model FLOPs utilisation).
EFFICIENCY = 0.35
#: What a GPU holds besides PyTorch's allocations: the CUDA context and kernels, and the caching allocator's slack.
CUDA_CONTEXT_BYTES = 0.6 * GIB
ALLOCATOR_SLACK = 0.10
#: Characters per token when only a data set's character counts are known (English-like text and BPE tokenizers).
CHARS_PER_TOKEN = 4.0
#: The attention projections LoRA targets when the configuration names none (the trainer's default).
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
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelConfigError(f"config.json lacks {exc} (hidden_size, num_hidden_layers, num_attention_heads, "
                                   "intermediate_size, vocab_size)") from exc
        kv = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
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
        return ATTENTION
    if names == "all-linear":
        return ATTENTION + MLP
    return tuple(n for n in names if n in ATTENTION + MLP)


def _compute_bytes(config: TrainingConfig) -> int:
    t = config.training
    if t.bf16 or t.fp16 or config.model.torch_dtype in ("float16", "bfloat16") or t.quantization.bits:
        return 2
    if config.model.torch_dtype == "float32":
        return 4
    return 2  # "auto" loads checkpoints at their stored 16 bits, which is every model this estimates


def memory(shape: ModelShape, config: TrainingConfig, *, batch_tokens: int, row_tokens: int) -> MemoryEstimate:
    """Peak memory of a step over ``batch_tokens`` tokens in rows of at most ``row_tokens``."""
    t, notes = config.training, []
    word = _compute_bytes(config)
    bits = t.quantization.bits
    decoder_linear = shape.layers * shape.linear_params_per_layer
    rest = shape.params - decoder_linear
    if bits:
        block = 256 if t.quantization.double_quant else 64
        weights = decoder_linear * (bits / 8 + (4 / block if bits == 4 else 4 / 4096)) + rest * 2
        notes.append(f"decoder linear layers at {bits} bits, embeddings, norms and lm_head at 16 bits")
    else:
        weights = shape.params * word
    if t.lora.enabled:
        shapes = shape.linear_shapes()
        trainable_params = shape.layers * sum(t.lora.r * (shapes[n][0] + shapes[n][1]) for n in _targets(config))
        state = 8 if t.optimizer != "sgd" else 0  # Adam's two fp32 moments
        trainable = trainable_params * (4 + 4 + state)  # fp32 weights and gradients
    else:
        trainable_params = shape.params
        state = 8 if t.optimizer != "sgd" else 0
        # gradients at the weights' dtype, and at 16 bits an fp32 master copy besides the optimizer's moments
        trainable = shape.params * ((4 + state) if word == 4 else (2 + 4 + state))
        notes.append("full fine-tune: gradients and optimizer states for every parameter")
    per_token_layer = 8 * shape.hidden + 2 * shape.kv_heads * shape.head_dim + 4 * shape.intermediate
    if t.gradient_checkpointing:
        acts = batch_tokens * (shape.layers * shape.hidden + per_token_layer) * word
        notes.append("gradient checkpointing: one layer's activations at a time")
    else:
        acts = batch_tokens * shape.layers * per_token_layer * word
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
    """Tokens in one micro-batch as the trainer builds it: packed without padding for SFT, padded to the longest
    row otherwise (and twice the rows for preference pairs)."""
    t = config.training
    if t.method is Method.SFT and t.padding_free:
        return math.ceil(t.batch_size * data.tokens_per_row)
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
    frozen = shape.params - trainable_params if config.training.lora.enabled else 0
    trainable = shape.params - frozen
    flops = tokens * (4 * frozen + 6 * trainable)
    if config.training.gradient_checkpointing:
        flops += tokens * 2 * shape.params  # the forward again
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
    (r"H200", 989), (r"H100.*(PCIe|pcie)", 756), (r"H100", 989), (r"A100", 312), (r"L40S", 362),
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

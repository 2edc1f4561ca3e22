"""Refuse a job that cannot run, before any weights load: ``check_spec(spec)`` raises ConfigRefused.

Each refusal names the config field and says the fix. Precision decisions: fp16 needs CUDA (refused on a CPU);
bf16 is refused on a CUDA GPU without bfloat16 and allowed on the CPU, where PyTorch autocasts to bfloat16
(slower than float32 on CPUs without native bf16, but it works). QLoRA (4-bit NF4/FP4 and 8-bit) runs on CUDA and,
through bitsandbytes' CPU kernels, on the CPU. ``paged_adamw_32bit`` becomes ``adamw_torch`` on the CPU (logged
by the trainer), since paging only moves optimizer state between GPU and CPU memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shared.config import DataFormat, Method, TrainingConfig, method_format_problem
from shared.jobspec import JobSpec
from trainer.errors import ConfigRefused

#: Layer types LoRA can adapt (peft), by class name so that quantized layers count too.
LORA_LAYER_TYPES = {"Linear", "Linear4bit", "Linear8bitLt", "Conv1D", "Conv1d", "Conv2d", "Conv3d", "Embedding"}


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    gpus: int
    bf16: bool

    @classmethod
    def detect(cls) -> Hardware:
        import torch

        if not torch.cuda.is_available():
            return cls(cuda=False, gpus=0, bf16=True)
        return cls(cuda=True, gpus=torch.cuda.device_count(),
                   bf16=torch.cuda.is_bf16_supported(including_emulation=False))


def bitsandbytes_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


def check_spec(spec: JobSpec, *, hardware: Hardware | None = None, check_hardware: bool = True) -> None:
    """Raise ConfigRefused for the first problem found; cheap checks first, the model's module tree last.

    ``check_hardware=False`` skips what depends on the machine (precision, GPUs, bitsandbytes, the judge's key),
    for a preflight on a machine that is not the one the job will train on.
    """
    config = spec.config
    check_method(config, DataFormat(spec.dataset_format))
    check_schedule(config)
    if check_hardware:
        check_machine(config, hardware or Hardware.detect())
        check_judge_key(config)
    check_resume(spec)
    check_model(config)
    check_reward_model(config)


def check_method(config: TrainingConfig, fmt: DataFormat) -> None:
    t = config.training
    method = t.method
    problem = method_format_problem(method, fmt)
    if problem:
        raise ConfigRefused("training.method", problem)
    if method is not Method.RLHF:
        return
    r = t.rlhf
    if not r.reward_model and not r.judge_url:
        raise ConfigRefused("training.rlhf.reward_model", (
            "training.method='rlhf' needs a reward source: set training.rlhf.reward_model (hub id or path of a "
            "sequence-classification model with one score) or training.rlhf.judge_url and training.rlhf.judge_model"
        ))
    if r.max_completion_length >= config.model.max_seq_length:
        raise ConfigRefused("training.rlhf.max_completion_length", (
            f"training.rlhf.max_completion_length={r.max_completion_length} leaves no room for the prompt within "
            f"model.max_seq_length={config.model.max_seq_length}: lower it or raise model.max_seq_length"
        ))
    per_step = t.batch_size * t.gradient_accumulation_steps * t.gpu_count
    if per_step % r.num_generations:
        fits = [n for n in range(2, per_step + 1) if per_step % n == 0] or ["none: raise training.batch_size"]
        raise ConfigRefused("training.rlhf.num_generations", (
            f"training.rlhf.num_generations={r.num_generations} must divide the completions per optimizer step, "
            f"training.batch_size x gradient_accumulation_steps x gpu_count = {per_step}: set num_generations to one "
            f"of {fits}, or training.batch_size to a multiple of {r.num_generations}"
        ))


def check_schedule(config: TrainingConfig) -> None:
    t, p, d = config.training, config.predictions, config.data
    if t.warmup_steps and t.warmup_ratio:
        raise ConfigRefused("training.warmup_steps", "set only one of training.warmup_steps and training.warmup_ratio")
    if t.lr_scheduler == "constant" and (t.warmup_steps or t.warmup_ratio):
        raise ConfigRefused("training.lr_scheduler", (
            "training.lr_scheduler='constant' ignores warmup: use 'constant_with_warmup', or unset the warmup"
        ))
    if d.eval_split == 0 and t.eval_steps:
        raise ConfigRefused("training.eval_steps", (
            "training.eval_steps is set but data.eval_split=0 holds out nothing to evaluate: set data.eval_split "
            "(e.g. 0.1) or unset training.eval_steps"
        ))
    if p.enabled and p.frequency == "eval" and d.eval_split == 0:
        raise ConfigRefused("predictions.frequency", (
            "predictions.frequency='eval' needs held-out rows: set data.eval_split (e.g. 0.1), or use "
            "predictions.frequency='epoch' or 'steps'"
        ))


def check_machine(config: TrainingConfig, hw: Hardware) -> None:
    t = config.training
    q = t.quantization
    if t.fp16 and not hw.cuda:
        raise ConfigRefused("training.fp16", (
            "training.fp16=true needs a CUDA GPU (fp16 mixed precision with loss scaling) and this machine has none: "
            "set training.fp16=false (and training.bf16=true for bfloat16 autocast on the CPU)"
        ))
    if t.bf16 and hw.cuda and not hw.bf16:
        raise ConfigRefused("training.bf16", (
            "training.bf16=true needs a GPU with bfloat16 (NVIDIA Ampere or newer) and this one has none: "
            "set training.fp16=true instead"
        ))
    if q.bits and not bitsandbytes_available():
        raise ConfigRefused("training.quantization.bits", (
            f"training.quantization.bits={q.bits} needs the bitsandbytes package, which cannot be imported here: "
            "install bitsandbytes on the trainer machine, or unset training.quantization.bits"
        ))
    if q.bits and q.compute_dtype == "bfloat16" and hw.cuda and not hw.bf16:
        raise ConfigRefused("training.quantization.compute_dtype", (
            "training.quantization.compute_dtype='bfloat16' needs a GPU with bfloat16 (Ampere or newer): "
            "set it to 'float16'"
        ))
    if t.optimizer.startswith("paged_") and hw.cuda and not bitsandbytes_available():
        raise ConfigRefused("training.optimizer", (
            f"training.optimizer={t.optimizer!r} needs the bitsandbytes package, which cannot be imported here: "
            "install it, or use training.optimizer='adamw_torch'"
        ))
    if t.gpu_count > max(hw.gpus, 1):
        raise ConfigRefused("training.gpu_count", (
            f"training.gpu_count={t.gpu_count} but this machine has {hw.gpus} CUDA GPU(s): set training.gpu_count "
            f"to at most {max(hw.gpus, 1)}, or run the job on a machine with {t.gpu_count} GPUs"
        ))


def check_judge_key(config: TrainingConfig) -> None:
    r = config.training.rlhf
    key_env = r.judge_key_env()
    if config.training.method is not Method.RLHF or not r.judge_url or not key_env or os.environ.get(key_env):
        return
    if r.judge_api_key_secret:
        raise ConfigRefused("training.rlhf.judge_api_key_secret", (
            f"the judge's key did not reach the trainer ({key_env} is not set): store it with PUT /api/secrets/judge"))
    raise ConfigRefused("training.rlhf.judge_api_key_env", (
        f"the environment variable {key_env} named by training.rlhf.judge_api_key_env is not set on "
        "the trainer machine: set it to the judge's API key (or unset judge_api_key_env for a judge without a key)"
    ))


def check_resume(spec: JobSpec) -> None:
    value = spec.resume_from_checkpoint
    if not value or value in ("latest", "auto"):
        return
    if not os.path.isfile(os.path.join(value, "trainer_state.json")):
        raise ConfigRefused("resume_from_checkpoint", (
            f"resume_from_checkpoint={value!r} is not a checkpoint folder (it holds no trainer_state.json): give "
            "a checkpoint-N folder of an earlier attempt, 'latest', or unset it"
        ))


def module_types(model) -> dict[str, str]:
    """Every module's full name and class name."""
    return {name: type(module).__name__ for name, module in model.named_modules() if name}


def missing_target_modules(targets: list[str], modules: dict[str, str]) -> tuple[list[str], list[str]]:
    """(names no module has, names that only match layers LoRA cannot adapt) — peft matches name suffixes."""
    missing, unsupported = [], []
    for target in targets:
        matches = [kind for name, kind in modules.items() if name == target or name.endswith("." + target)]
        if not matches:
            missing.append(target)
        elif not any(kind in LORA_LAYER_TYPES for kind in matches):
            unsupported.append(target)
    return missing, unsupported


def check_model(config: TrainingConfig) -> None:
    from trainer.modeling import linear_module_names, model_skeleton

    m, lora = config.model, config.training.lora
    try:
        skeleton = model_skeleton(config)
    except Exception as exc:
        raise ConfigRefused("model.base_model", (
            f"model.base_model={m.base_model!r} cannot be loaded as a causal language model "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}): check the "
            "hub id or path, model.revision and model.trust_remote_code"
        )) from None
    positions = getattr(skeleton.config.get_text_config(), "max_position_embeddings", None)
    if positions and m.max_seq_length > positions:
        raise ConfigRefused("model.max_seq_length", (
            f"model.max_seq_length={m.max_seq_length} is longer than {m.base_model} supports "
            f"({positions} positions): set model.max_seq_length to at most {positions}"
        ))
    if lora.enabled and isinstance(lora.target_modules, list):
        missing, unsupported = missing_target_modules(lora.target_modules, module_types(skeleton))
        if missing or unsupported:
            names = sorted(linear_module_names(skeleton))
            problem = (f"names {missing}, which {type(skeleton).__name__} does not have" if missing
                       else f"names {unsupported}, which are not linear layers")
            raise ConfigRefused("training.lora.target_modules", (
                f"training.lora.target_modules {problem}; its linear layers are {names}: choose from those, "
                "use 'all-linear', or leave it unset for the attention projections"
            ))


def check_reward_model(config: TrainingConfig) -> None:
    t = config.training
    if t.method is not Method.RLHF or not t.rlhf.reward_model:
        return
    from transformers import AutoConfig, AutoModelForSequenceClassification

    name = t.rlhf.reward_model
    try:
        reward_config = AutoConfig.from_pretrained(name, trust_remote_code=config.model.trust_remote_code)
    except Exception as exc:
        raise ConfigRefused("training.rlhf.reward_model", (
            f"training.rlhf.reward_model={name!r} cannot be loaded ({type(exc).__name__}): check the hub id or path"
        )) from None
    remote = "AutoModelForSequenceClassification" in (getattr(reward_config, "auto_map", None) or {})
    if not remote and type(reward_config) not in AutoModelForSequenceClassification._model_mapping:
        raise ConfigRefused("training.rlhf.reward_model", (
            f"training.rlhf.reward_model={name!r} is a {reward_config.model_type} model, which has no "
            "sequence-classification head: use a reward model (AutoModelForSequenceClassification, one score)"
        ))
    if reward_config.num_labels != 1:
        raise ConfigRefused("training.rlhf.reward_model", (
            f"training.rlhf.reward_model={name!r} scores with {reward_config.num_labels} labels; a reward model "
            "gives one score (num_labels=1): use such a model"
        ))

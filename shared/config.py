"""The TrainingConfig a person submits: model, data, training (with LoRA and quantization), predictions.

Pydantic-only, so the trainer can import it alone. Validation messages name the field and the fix.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.config_spellings import canonical
from shared.serving import ServeSection


class Method(StrEnum):
    SFT = "sft"
    DPO = "dpo"
    ORPO = "orpo"
    RLHF = "rlhf"


class DataFormat(StrEnum):
    TEXT = "text"
    CHAT = "chat"
    INSTRUCTION = "instruction"
    PREFERENCE = "preference"


#: Which data formats each method can train on.
METHOD_FORMATS: dict[Method, frozenset[DataFormat]] = {
    Method.SFT: frozenset({DataFormat.TEXT, DataFormat.CHAT, DataFormat.INSTRUCTION}),
    Method.DPO: frozenset({DataFormat.PREFERENCE}),
    Method.ORPO: frozenset({DataFormat.PREFERENCE}),
    Method.RLHF: frozenset({DataFormat.CHAT, DataFormat.INSTRUCTION, DataFormat.PREFERENCE}),
}


def method_format_problem(method: Method, fmt: DataFormat) -> str | None:
    """Why ``method`` cannot train on ``fmt`` data, with the fix; None when it can. The one statement of this rule
    (the gateway refuses with it, preflight and the trainer fail with it)."""
    if fmt in METHOD_FORMATS[method]:
        return None
    if method in (Method.DPO, Method.ORPO):
        fix = "upload preference data (rows with prompt, chosen and rejected), or use training.method='sft'"
    elif method is Method.SFT:
        fix = "use training.method='dpo' or 'orpo' for preference data, or upload text, chat or instruction data"
    else:
        fix = "RLHF samples completions for prompts: upload chat, instruction or preference data"
    return f"training.method={method.value!r} cannot train on {fmt.value} data: {fix}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Strict):
    base_model: str = Field(min_length=1, description="Hub id or local path of the base model (the document's "
                                                         "model.name, or model as a plain string).")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = False
    max_seq_length: int = Field(default=512, ge=16, le=131072)
    device_map: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="Where the model trains: auto (a GPU when the machine has one), cuda (a GPU, or "
                                    "the job fails saying so), cpu.")
    torch_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="The dtype the base weights load in; auto: the quantization compute dtype, else "
                                    "bfloat16/float16 when training.bf16/fp16 is set, else float32.")


class DataSection(_Strict):
    dataset_id: str | None = Field(default=None, description="Id returned by the data set upload.")
    train_path: str | None = Field(default=None, description="Path of a JSONL file the trainer can read.")
    format: DataFormat | None = Field(default=None, description="Detected from the data when unset.")
    eval_split: float = Field(default=0.1, ge=0.0, lt=0.9)
    max_samples: int | None = Field(default=None, ge=1)
    shuffle_seed: int = 42

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        """A configuration may name its data later (a deploy does, or is refused); never two sources."""
        if self.dataset_id and self.train_path:
            raise ValueError("set only one of data.dataset_id and data.train_path")
        return self

    @property
    def has_source(self) -> bool:
        return bool(self.dataset_id or self.train_path)


class LoraSection(_Strict):
    enabled: bool = True
    r: int = Field(default=16, ge=1, le=1024)
    alpha: int = Field(default=32, ge=1, le=4096)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        default=None, description="None picks the architecture's attention projections."
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA). The built-in server serves it; "
                                                      "vLLM and Ollama do not (export the merged model for them).")


class QuantizationSection(_Strict):
    bits: Literal[4, 8] | None = Field(default=None, description="4 or 8 for QLoRA through bitsandbytes.")
    quant_type: Literal["nf4", "fp4"] = "nf4"
    compute_dtype: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    double_quant: bool = True


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Where a workload finds the judge key stored with ``PUT /api/secrets/judge`` (``judge_api_key_secret``).
JUDGE_KEY_ENV = "JUDGE_API_KEY"


class RlhfSection(_Strict):
    """Online RL (``training.method='rlhf'``): the reward comes from a reward model or from an LLM judge."""

    algorithm: Literal["grpo", "rloo"] = "grpo"
    reward_model: str | None = Field(
        default=None, description="Hub id or local path of a sequence-classification model with one score."
    )
    judge_url: str | None = Field(
        default=None, description="Base URL of an OpenAI-compatible API (POST {judge_url}/chat/completions)."
    )
    judge_model: str | None = Field(default=None, description="Model name the judge endpoint serves.")
    judge_api_key_secret: Literal["judge"] | None = Field(
        default=None, description="The stored secret that holds the judge's API key (PUT /api/secrets/judge): "
                                  "it reaches this job's trainer only. The way to give a key through the API.")
    judge_api_key_env: str | None = Field(
        default=None, description="For the trainer run by hand: the name of an environment variable of the trainer's "
                                  "machine that holds the judge's key. Refused through the API (use "
                                  "judge_api_key_secret).")
    num_generations: int = Field(default=4, ge=2, le=64, description="Completions sampled per prompt.")
    max_completion_length: int = Field(default=64, ge=1, le=8192)

    @field_validator("judge_api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError(
                "training.rlhf.judge_api_key_env is the NAME of an environment variable (letters, digits, _), "
                "e.g. JUDGE_API_KEY; put the key itself in that variable, never in the config"
            )
        return v

    @field_validator("judge_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("training.rlhf.judge_url must start with http:// or https://")
        parts = urlsplit(v)
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
        except ValueError:
            raise ValueError("training.rlhf.judge_url has a port that is not a number from 1 to 65535") from None
        if "?" in v or "#" in v or "@" in parts.netloc or not parts.hostname:
            raise ValueError("training.rlhf.judge_url must be the API's base URL with a host and without '?', '#' or "
                             "credentials (e.g. https://host/v1); the key goes in judge_api_key_secret")
        return v

    @model_validator(mode="after")
    def _reward_source(self) -> RlhfSection:
        if self.reward_model and self.judge_url:
            raise ValueError("set only one of training.rlhf.reward_model and training.rlhf.judge_url")
        if self.judge_url:
            if not self.judge_model:
                raise ValueError("training.rlhf.judge_url needs training.rlhf.judge_model (the model it serves)")
        elif self.judge_model or self.judge_api_key_env or self.judge_api_key_secret:
            raise ValueError("training.rlhf.judge_model, judge_api_key_env and judge_api_key_secret need "
                             "training.rlhf.judge_url")
        if self.judge_api_key_env and self.judge_api_key_secret:
            raise ValueError("set only one of training.rlhf.judge_api_key_secret and training.rlhf.judge_api_key_env")
        return self

    def judge_key_env(self) -> str | None:
        """The environment variable the trainer reads the judge's key from, if the judge takes one."""
        return JUDGE_KEY_ENV if self.judge_api_key_secret else self.judge_api_key_env


class TrainingSection(_Strict):
    method: Method = Method.SFT
    epochs: float = Field(default=1.0, gt=0, le=1000)
    max_steps: int | None = Field(default=None, ge=1, description="Overrides epochs when set.")
    batch_size: int = Field(default=4, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=4096)
    learning_rate: float = Field(default=2e-4, gt=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0, lt=1)
    optimizer: Literal["adamw_torch", "paged_adamw_32bit", "sgd"] = "adamw_torch"
    max_grad_norm: float = Field(default=1.0, gt=0)
    gradient_checkpointing: bool = False
    bf16: bool = False
    fp16: bool = False
    seed: int = 42
    logging_steps: int = Field(default=1, ge=1)
    eval_steps: int | None = Field(default=None, ge=1, description="Evaluate every N steps; else per epoch.")
    save_steps: int | None = Field(default=None, ge=1, description="Checkpoint every N steps; else per epoch.")
    keep_best_checkpoints: int | None = Field(
        default=None, ge=1, le=100,
        description="Keep the N checkpoints with the lowest eval loss, plus the last, and delete the rest; "
        "None keeps the last two.",
    )
    beta: float = Field(default=0.1, gt=0, description="DPO/ORPO preference strength.")
    padding_free: bool = Field(
        default=True, description="SFT: concatenate each batch's sequences instead of padding them (others: unused)."
    )
    merge_adapter: bool = Field(default=False, description="Also save the base model with the adapter merged in.")
    gpu_count: int = Field(default=1, ge=1, le=64, description="GPUs of one machine; >1 trains data-parallel.")
    lora: LoraSection = LoraSection()
    quantization: QuantizationSection = QuantizationSection()
    rlhf: RlhfSection = RlhfSection()

    @model_validator(mode="after")
    def _precision(self) -> TrainingSection:
        if self.bf16 and self.fp16:
            raise ValueError("training.bf16 and training.fp16 are both true: choose one")
        if self.quantization.bits and not self.lora.enabled:
            raise ValueError("training.quantization.bits needs training.lora.enabled=true (QLoRA trains adapters)")
        if self.merge_adapter and not self.lora.enabled:
            raise ValueError(
                "training.merge_adapter needs training.lora.enabled=true (a full fine-tune is saved as a whole model)"
            )
        return self


class PredictionsSection(_Strict):
    enabled: bool = True
    sample_count: int = Field(default=3, ge=0, le=100)
    frequency: Literal["epoch", "eval", "steps"] = "epoch"
    step_interval: int | None = Field(default=None, ge=1)
    max_new_tokens: int = Field(default=32, ge=1, le=4096)
    temperature: float = Field(default=0.7, ge=0.0, le=5.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _interval(self) -> PredictionsSection:
        if self.frequency == "steps" and not self.step_interval:
            raise ValueError("predictions.frequency='steps' needs predictions.step_interval (e.g. 50)")
        return self


def _nul_path(value: object, path: str) -> str | None:
    """The dotted path of the first string holding a NUL character (PostgreSQL and most tools refuse it)."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if found := _nul_path(item, f"{path}.{key}" if path else str(key)):
            return found
    return None


class TrainingConfig(_Strict):
    """TuneFleet's configuration. The specification's spellings are accepted too (``shared.config_spellings``) and
    stored in these names; ``data`` may be left for the deploy to name."""

    name: str = Field(default="fine-tune", min_length=1, max_length=200)
    model: ModelSection
    data: DataSection = DataSection()
    training: TrainingSection = TrainingSection()
    predictions: PredictionsSection = PredictionsSection()
    serve: ServeSection | None = Field(default=None, description="Serve the model when the job completes "
                                       "(server_type vllm, ollama or builtin).")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: object) -> object:
        if found := _nul_path(data, ""):
            raise ValueError(f"{found} contains a NUL character (\\u0000); remove it")
        return canonical(data)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return v.strip()

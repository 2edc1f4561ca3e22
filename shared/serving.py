"""Serving a registered model: the request a user makes, the states a serving goes through, and what the engines
report. Pydantic-only, like ``shared.config``, which embeds ``ServeSection`` so that a job can ask to be served
when it completes."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ServerType(StrEnum):
    VLLM = "vllm"
    OLLAMA = "ollama"
    BUILTIN = "builtin"


class ServingState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


class ServingOptions(BaseModel):
    """The specification's ``config`` of a serving deploy. Each engine reads what applies to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0, description="vLLM: the share of GPU memory "
                                          "it may take for weights and KV cache.")
    max_model_len: int | None = Field(default=None, ge=16, le=1_048_576, description="vLLM and built-in: the longest "
                                      "prompt plus completion, in tokens; default: the model's.")
    quantize: Literal["q4_K_M", "q4_K_S", "q8_0"] | None = Field(
        default=None, description="Ollama: quantize on import (the adapter is merged and converted to GGUF first).")
    max_new_tokens_limit: int = Field(default=1024, ge=1, le=65536, description="The largest max_tokens a caller "
                                      "may ask of this serving.")


class ServeSection(BaseModel):
    """``serve`` in a configuration: when the job completes, its model is served on this engine without a call."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    server_type: ServerType = ServerType.BUILTIN
    name: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
                             description="The model name callers use on /v1; default: the configuration's name.")
    config: ServingOptions = ServingOptions()


class Finding(BaseModel):
    """One result of the checks made on an adapter before an engine gets it."""

    model_config = ConfigDict(frozen=True)
    level: Literal["error", "warning"]
    field: str = Field(description="What the finding is about, e.g. adapter_config.use_dora.")
    message: str = Field(description="What is wrong and the fix.")

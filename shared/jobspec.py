"""The JobSpec: everything the trainer needs to run one job, written as a JSON file into its bundle."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.config import DataFormat, TrainingConfig


class JobSpec(BaseModel):
    """What the trainer reads (``python -m trainer --spec FILE``). Never spliced into a command line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec_version: int = 1
    job_id: str
    attempt: int = 1
    config: TrainingConfig
    dataset_path: str = Field(description="Local path of the JSONL training data inside the bundle.")
    dataset_format: DataFormat
    output_dir: str
    ingest_url: str | None = Field(default=None, description="Base URL of metrics_ingest; None disables.")
    ingest_token: str | None = Field(default=None, repr=False, description="Per-job bearer token for metrics_ingest.")
    resume_from_checkpoint: str | None = None
    checkpoint_upload_url: str | None = Field(
        default=None, repr=False, description="Signed PUT URL: each saved checkpoint is sent there as a tar.gz.")
    public_addresses_only: bool = Field(
        default=False, description="Call URLs the configuration names (an RLHF judge) only at public addresses: set "
                                   "for trainers on a server of TuneFleet's (shared.netpolicy).")

    @classmethod
    def read(cls, path: str) -> JobSpec:
        with open(path, encoding="utf-8") as f:
            return cls.model_validate_json(f.read())


class TrainerResult(BaseModel):
    """What the trainer writes as ``result.json`` in its output folder when it ends."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["completed", "failed", "interrupted"]
    error_type: str | None = None
    error_message: str | None = None
    error_field: str | None = Field(default=None, description="The config field a ConfigRefused error names.")
    traceback: str | None = None
    adapter_path: str | None = None
    merged_path: str | None = Field(default=None, description="Base model with the adapter merged (safetensors).")
    checkpoint_path: str | None = Field(
        default=None, description="The latest checkpoint: a retry's resume_from_checkpoint."
    )
    output_dir: str | None = None
    final_loss: float | None = None
    final_eval_loss: float | None = None
    global_step: int = 0
    train_samples: int = 0
    eval_samples: int = 0
    training_seconds: float = 0.0

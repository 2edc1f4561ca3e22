"""One Settings object, read from ``TUNEFLEET_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: What TUNEFLEET_SECRET_KEY needs at least: its length, and how many different characters it has.
MIN_SECRET_KEY_CHARS, MIN_SECRET_KEY_DISTINCT = 32, 12


def _default_home() -> Path:
    return Path.home() / ".tunefleet"


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value (a weak key, a URL with its password) is never echoed in the error
    model_config = SettingsConfigDict(env_prefix="TUNEFLEET_", extra="ignore", hide_input_in_errors=True)

    home: Path = Field(default_factory=_default_home, description="Data folder of the embedded stack.")
    nats_url: str | None = Field(default=None, description="External NATS; embedded when unset.")
    database_url: str | None = Field(default=None, description="External PostgreSQL; embedded when unset.")
    secret_key: SecretStr | None = Field(default=None, description="Signs per-job tokens.")
    secrets_public_key: str | None = Field(default=None, description="Seals provider credentials (gateway).")
    secrets_private_key: SecretStr | None = Field(
        default=None, description="Opens provider credentials; given to provider services only.")

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8001
    ingest_public_url: str | None = Field(default=None, description="URL the trainer reaches ingest at.")
    gateway_public_url: str | None = Field(default=None, description="URL remote workloads reach the gateway at.")

    storage_backend: Literal["local", "s3"] = Field(
        default="local", description="Where files are kept (shared/storage.py): local, a folder of TUNEFLEET_HOME; "
                                     "s3, an S3-compatible bucket (credentials from boto3's usual chain).")
    s3_bucket: str | None = Field(default=None, description="The bucket, with storage_backend s3.")
    s3_endpoint_url: str | None = Field(default=None, description="An S3-compatible service's URL (MinIO …); "
                                                                  "unset for AWS.")
    s3_public_endpoint_url: str | None = Field(
        default=None, description="The S3 URL that remote workloads reach, where it differs from s3_endpoint_url "
                                  "(a cluster-internal MinIO behind a public hostname): presigned URLs are signed "
                                  "for this host.")
    s3_region: str | None = None
    s3_prefix: str = Field(default="", description="A key prefix inside the bucket, for several stacks in one.")
    s3_part_mb: int = Field(
        default=64, ge=5, le=5120, description="A workload sends an output larger than this to the bucket in parts "
                                               "of this size, each retried on its own (S3's parts are 5 MiB to 5 GiB).")

    max_upload_mb: int = 512
    db_pool_min: int = 1
    db_pool_max: int = 5

    otel_exporter: str = Field(default="none", description="none | console | otlp")
    otel_endpoint: str | None = None
    log_level: str = "INFO"

    cloud_poll_interval_s: float = Field(default=10.0, gt=0, description="How often cloud resources are polled.")
    local_poll_interval_s: float = Field(default=1.0, gt=0, description="How often local trainers are checked.")
    provisioning_timeout_s: float = Field(
        default=1200.0, gt=0, description="Longest a resource may stay provisioning, counted from its last entry "
                                          "into that state (a big image can pull for many minutes).")
    stall_timeout_s: float = Field(
        default=1800.0, gt=0, description="A training run whose progress stops for this long is stalled: it is "
                                          "ended and retried.")
    max_container_restarts: int = Field(
        default=3, ge=1, description="Restarts of a workload's container before its job fails.")
    poll_concurrency: int = Field(default=8, ge=1, description="Resources polled at once by one provider.")
    sandbox: bool = Field(
        default=False, description="The clouds are TuneFleet's local emulators (tunefleet up --sandbox): "
                                   "workloads run on this machine, so loopback public URLs are accepted.")
    workload_python_url: str | None = Field(
        default=None, description="A CPython 3.11+ archive (python-build-standalone layout) for machines whose "
                                  "Python is older; the bootstrap's pinned build when unset.")
    workload_python_sha256: str | None = Field(default=None, description="SHA-256 of workload_python_url.")
    runpod_default_image: str = Field(
        default="pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime",
        description="The image of RunPod pods when a deploy names none: a stock PyTorch image.")

    lambda_ssh_port: int = Field(default=22, description="SSH port of Lambda instances (the sandbox's differs).")
    kaggle_weekly_gpu_hours: float = Field(
        default=30.0, ge=0, description="Kaggle's weekly GPU quota per account (about 30 h; Kaggle varies it): a "
                                        "Kaggle GPU deploy whose estimate would pass it, with the user's Kaggle "
                                        "GPU hours of the last 7 days, is refused.")
    kaggle_session_hours: float = Field(
        default=12.0, gt=0, description="Kaggle's session limit for CPU and GPU kernels (TPU kernels: 9 h).")
    hub_check_timeout_s: float = Field(
        default=10.0, gt=0, description="How long saving a configuration waits for the Hugging Face Hub to check "
                                        "its base model before it says the check was skipped.")
    max_artifacts_gb: float = Field(
        default=100.0, gt=0, description="Most output (and largest checkpoint) a workload may send back or have "
                                         "fetched, decompressed.")

    allow_remote_code: bool = Field(
        default=False, description="Let configurations set model.trust_remote_code: a model's own Python code then "
                                   "runs in preflight on this server and in local jobs. Off: refused with 422.")
    allow_private_urls: bool = Field(
        default=False, description="Let a local job's RLHF judge (training.rlhf.judge_url) and users' webhooks be at "
                                   "a private, loopback or link-local address: one on the operator's own network.")
    model_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Folders (separated by ':') whose models users may name by local path, "
                                          "besides the data folder's models/ and their own registered models.")
    data_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Folders (separated by ':') whose files users may name as "
                                          "data.train_path; otherwise only uploaded data sets are used.")

    max_local_jobs_per_user: int = Field(default=2, ge=0, description="Local jobs one user may have unfinished.")
    max_preflights_per_user: int = Field(default=1, ge=0, description="Preflights of one user running at once, "
                                                                      "per gateway process.")
    max_streams_per_user: int = Field(default=8, ge=0, description="Live event streams (SSE) one user may hold "
                                                                   "open, per gateway process.")

    webhook_retry_base_s: float = Field(
        default=5.0, gt=0, description="First wait before a failed webhook or email is tried again; each later wait "
                                       "doubles (with jitter), up to an hour.")
    webhook_give_up_s: float = Field(
        default=86400.0, gt=0, description="A webhook or email still failing this long after its first try is "
                                           "given up.")
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="Longest wait for a webhook's answer.")
    smtp_host: str | None = Field(default=None, description="SMTP server for job emails; none are sent when unset.")
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_tls: Literal["none", "starttls", "tls"] = Field(
        default="starttls", description="none (plain), starttls (upgrade, port 587) or tls (implicit, port 465).")
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = Field(default="TuneFleet <tunefleet@localhost>", description="The From of job emails.")

    trainer_python: str | None = Field(default=None, description="Python that runs local trainers and preflights.")
    trainer_isolation: Literal["auto", "on", "off"] = Field(
        default="auto", description="Run users' code on this machine (local trainers, preflights) under an OS uid of "
                                    "each user's own: on, auto (when the server runs as root and the uids can run "
                                    "the trainer's Python), off.")
    trainer_uids: str = Field(default="200000-265535", pattern=r"^\d+-\d+$",
                              description="The uids (first-last) given to users' code, one per TuneFleet user.")
    stop_grace_seconds: float = 20.0

    vllm_python: Path | None = Field(
        default=None, description="Python of the virtual environment that holds vLLM (tunefleet serving install "
                                  "vllm makes one); default: {home}/engines/vllm/bin/python.")
    vllm_url: str | None = Field(default=None, description="An existing vLLM OpenAI server (started with "
                                 "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) to load adapters into, "
                                 "instead of starting one.")
    vllm_api_key: SecretStr | None = Field(default=None, description="The key of the server at vllm_url.")
    ollama_url: str | None = Field(default=None, description="The Ollama server models are created on "
                                   "(e.g. http://127.0.0.1:11434); serving on ollama is refused without one.")
    engine_host: str = Field(default="127.0.0.1", description="Address the engines this server starts listen on; "
                             "the gateway must reach it.")
    serving_start_timeout_s: float = Field(default=600.0, gt=0, description="Longest wait for an engine to answer "
                                           "its smoke prompt before the serving is failed.")

    @field_validator("model_dirs", "data_dirs", mode="before")
    @classmethod
    def _path_list(cls, value):
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()]
        return value

    @field_validator("secret_key")
    @classmethod
    def _strong_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        """The key signs every job's ingest token and every workload URL: a guessable one lets anyone forge them."""
        if value is not None:
            key = value.get_secret_value()
            if len(key) < MIN_SECRET_KEY_CHARS or len(set(key)) < MIN_SECRET_KEY_DISTINCT:
                raise ValueError(f"TUNEFLEET_SECRET_KEY is too weak: it needs at least {MIN_SECRET_KEY_CHARS} "
                                 f"characters, not one repeated pattern; make one with `openssl rand -base64 48` "
                                 "(tunefleet up makes one in its data folder)")
        return value

    @property
    def trainer_uid_range(self) -> tuple[int, int]:
        first, _, last = self.trainer_uids.partition("-")
        return int(first), int(last)

    @property
    def engines_dir(self) -> Path:
        """Virtual environments of serving engines (vLLM) and their logs."""
        return self.home / "engines"

    @property
    def models_dir(self) -> Path:
        """Models every user may name by path (the demo's tiny model lives here)."""
        return self.home / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def public_url(self) -> str:
        return self.gateway_public_url or f"http://{self.gateway_host}:{self.gateway_port}"

    @property
    def ingest_url(self) -> str:
        return self.ingest_public_url or f"http://{self.ingest_host}:{self.ingest_port}"

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError("TUNEFLEET_DATABASE_URL is not set (tunefleet up sets it for its services)")
        return self.database_url

    def require_nats_url(self) -> str:
        if not self.nats_url:
            raise RuntimeError("TUNEFLEET_NATS_URL is not set (tunefleet up sets it for its services)")
        return self.nats_url

    def require_secret_key(self) -> str:
        if self.secret_key is None:
            raise RuntimeError("TUNEFLEET_SECRET_KEY is not set (tunefleet up creates one in its data folder)")
        return self.secret_key.get_secret_value()


@lru_cache
def get_settings() -> Settings:
    return Settings()

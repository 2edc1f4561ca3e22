"""Ingest limits and process options, read from ``TUNEFLEET_INGEST_*`` environment variables.

Limits hold per process: with N processes (or uvicorn workers) behind one address a job may send N times
``job_points_per_second``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEFLEET_INGEST_", extra="ignore")

    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes sharing the ingest port.")
    max_batch_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    max_batch_points: int = Field(50_000, ge=1, description="Batches with more metric values get 413.")
    max_batch_predictions: int = Field(1_000, ge=1, description="Batches with more predictions get 413.")
    job_points_per_second: float = Field(200_000.0, gt=0, description="Sustained rate per job before 429.")
    job_burst_points: float = Field(400_000.0, gt=0, description="Points a job may send at once after a pause.")
    max_in_flight: int = Field(64, ge=1, description="Requests handled at once; more get 429.")
    live_queue_batches: int = Field(1_000, ge=1, description="Stored batches waiting for live fan-out.")

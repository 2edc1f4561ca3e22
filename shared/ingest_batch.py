"""The body a trainer POSTs to metrics ingest (``POST /v1/jobs/{job_id}/batches``): the contract between the
reporter (``trainer/reporter.py``) and ingest (``services/metrics_ingest/batch.py``), which validates it further
(one column set per metric name, steps in order, duplicates dropped).

Two encodings may be mixed in one body. ``metrics`` is the trainer's row form (one object per step with a
``values`` map); ``series`` is the compact column form (one object per metric name)::

    {"batch_id": "job-7/42", "attempt": 1,
     "recorded_at": "2025-01-01T00:00:00+00:00",
     "series": [{"name": "loss", "steps": [1, 2, 3], "values": [0.9, 0.8, 0.7],
                 "epochs": [0.01, 0.02, 0.03], "recorded_at": null}],
     "metrics": [{"step": 4, "epoch": 0.04, "values": {"loss": 0.6}}],
     "predictions": []}

``attempt`` (default 1) is the attempt of the job that logged the points: each attempt's points are kept apart.
``epochs`` and the per-point ``recorded_at`` are optional (null when absent); a point without a time takes
the body's ``recorded_at``, else the time ingest received it; times without an offset are UTC. Steps are
0..2^31-1, values and epochs finite numbers, names 1..200 characters. A point logged twice in one batch
(same name and step) is kept once, the first one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shared.events import MetricPoint, PredictionRecord

MAX_STEP = 2**31 - 1
MAX_NAME = 200

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Step = Annotated[int, Field(ge=0, le=MAX_STEP)]


class SeriesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME)
    steps: list[Step]
    values: list[FiniteFloat]
    epochs: list[FiniteFloat | None] | None = None
    recorded_at: list[datetime] | None = None


MAX_ATTEMPT = 10_000


class BatchIn(BaseModel):
    batch_id: str = Field(min_length=1, max_length=200, description="Unique per job; a replay is dropped.")
    attempt: int = Field(1, ge=1, le=MAX_ATTEMPT, description="The attempt of the job whose trainer logged these.")
    recorded_at: datetime | None = None
    metrics: list[MetricPoint] = Field(default_factory=list)
    series: list[SeriesIn] = Field(default_factory=list)
    predictions: list[PredictionRecord] = Field(default_factory=list)

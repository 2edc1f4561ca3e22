from __future__ import annotations

import uuid

import asyncpg
from fastapi import APIRouter, Query

from shared.errors import ServiceUnavailable, ValidationFailed

from .. import views
from ..deps import CurrentUser, PoolDep
from ..schemas import Downsampling, MetricsPage, PredictionsPage

router = APIRouter(prefix="/api/training", tags=["metrics"])

MAX_POINTS = 10_000
MAX_NAME = 200

#: Metrics the trainer logs under transformers' names, shown under the specification's too.
SPEC_NAMES = {"grad_norm": "gradient_norm", "samples_per_second": "samples_per_sec",
              "gpu_memory_allocated_mb": "gpu_memory_mb"}


def _spec_row(row: dict) -> dict:
    """A metrics row with the specification's names beside TuneFleet's: ``timestamp`` (``recorded_at``),
    ``gradient_norm``, ``samples_per_sec`` and ``gpu_memory_mb`` (where logged; GPU memory only on CUDA)."""
    row["timestamp"] = row.get("recorded_at")
    for ours, theirs in SPEC_NAMES.items():
        if ours in row and theirs not in row:
            row[theirs] = row[ours]
    return row


def _spec_prediction(row: dict) -> dict:
    """A prediction with the specification's ``sample_id``, ``metrics`` (BLEU, ROUGE-L) and ``timestamp``."""
    scores = row.get("scores") or {}
    return {**row, "sample_id": f"sample_{row['sample_index']}", "timestamp": row.get("created_at"),
            "metrics": {"bleu": scores.get("bleu"), "rouge_l": scores.get("rouge_l")}}


@router.get("/metrics/{job_id}", response_model=MetricsPage)
async def get_metrics(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep,
                      epoch: int | None = Query(None, ge=1, description="Only points of this epoch (1-based)."),
                      name: list[str] | None = Query(None, description="Only these metrics; repeat to name several."),
                      max_points: int | None = Query(
                          None, ge=4, le=MAX_POINTS,
                          description="Downsample: at most this many points per metric, keeping each curve's "
                                      "minimum and maximum; all rows come in one page."),
                      limit: int | None = Query(None, ge=1, le=10000, description="Rows per page (default 100)."),
                      offset: int | None = Query(None, ge=0, le=1_000_000_000, description="Rows to skip (default 0)."),
                      attempt: int | None = Query(
                          None, ge=1, le=10000, description="Only this attempt's points. Without it, the job's curve: "
                                                            "each attempt's points up to where a later one began.")
                      ) -> MetricsPage:
    """One row per logged step with every value logged at it, oldest first: paged, or downsampled with
    ``max_points``. Each row says which attempt of the job logged it; ``attempts`` says where each began and where
    a later one took over (a retry resumes from its checkpoint, or starts again from step 1)."""
    if name is not None:
        if len(name) > views.MAX_SERIES:
            raise ValidationFailed(f"name: at most {views.MAX_SERIES} metrics in one read", field="name")
        for i, n in enumerate(name):
            if not 1 <= len(n) <= MAX_NAME or "\x00" in n:
                raise ValidationFailed(f"name: metric names are 1..{MAX_NAME} characters without NUL",
                                       field=f"name.{i}")
    await views.ensure_job_visible(pool, user, str(job_id))
    try:
        return await _read_metrics(pool, str(job_id), epoch, name, max_points, limit, offset, attempt)
    except asyncpg.QueryCanceledError as exc:
        raise ServiceUnavailable(f"the read ran over {views.READ_TIMEOUT_MS // 1000} s: ask for less (max_points, "
                                 "name=, epoch, or a smaller limit)") from exc


async def _read_metrics(pool, job_id: str, epoch: int | None, name: list[str] | None, max_points: int | None,
                        limit: int | None, offset: int | None, attempt: int | None) -> MetricsPage:
    if max_points is None:
        total, rows, spans = await views.metrics_page(pool, job_id, epoch=epoch, limit=limit or 100,
                                                        offset=offset or 0, names=name, attempt=attempt)
        return MetricsPage(job_id=job_id, total_count=total, metrics=[_spec_row(r) for r in rows], attempts=spans)
    for param, value in (("limit", limit), ("offset", offset)):
        if value is not None:
            raise ValidationFailed(f"{param}: not used with max_points, which returns every row in one page",
                                   field=param)
    rows, series, spans = await views.metrics_downsampled(pool, job_id, epoch=epoch, names=name,
                                                            max_points=max_points, attempt=attempt)
    return MetricsPage(job_id=job_id, total_count=len(rows), metrics=[_spec_row(r) for r in rows], attempts=spans,
                       downsampling=Downsampling(max_points=max_points, series=series))


@router.get("/predictions/{job_id}", response_model=PredictionsPage)
async def get_predictions(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep,
                          epoch: int | None = Query(None, ge=1), limit: int = Query(50, ge=1, le=1000),
                          attempt: int | None = Query(None, ge=1, le=10000,
                                                      description="Only this attempt's; else the job's curve.")
                          ) -> PredictionsPage:
    """Generated samples with their prompt and expected text, newest step first, each with its attempt."""
    await views.ensure_job_visible(pool, user, str(job_id))
    rows = await views.predictions(pool, str(job_id), epoch=epoch, limit=limit, attempt=attempt)
    return PredictionsPage(job_id=str(job_id), predictions=[_spec_prediction(r) for r in rows])

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query

from .. import queries
from ..deps import CurrentUser, PoolDep
from ..schemas import MetricsPage, PredictionsPage

router = APIRouter(prefix="/api/training", tags=["metrics"])


@router.get("/metrics/{job_id}", response_model=MetricsPage)
async def get_metrics(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep,
                      epoch: int | None = Query(None, ge=1, description="Only points of this epoch (1-based)."),
                      limit: int = Query(100, ge=1, le=10000), offset: int = Query(0, ge=0)) -> MetricsPage:
    """One row per logged step with every value logged at it, oldest first."""
    await queries.ensure_job_visible(pool, user, str(job_id))
    total, rows = await queries.metrics_page(pool, str(job_id), epoch=epoch, limit=limit, offset=offset)
    return MetricsPage(job_id=str(job_id), total_count=total, metrics=rows)


@router.get("/predictions/{job_id}", response_model=PredictionsPage)
async def get_predictions(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep,
                          epoch: int | None = Query(None, ge=1), limit: int = Query(50, ge=1, le=1000)
                          ) -> PredictionsPage:
    """Generated samples with their prompt and expected text, newest step first."""
    await queries.ensure_job_visible(pool, user, str(job_id))
    rows = await queries.predictions(pool, str(job_id), epoch=epoch, limit=limit)
    return PredictionsPage(job_id=str(job_id), predictions=rows)

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query

from shared.errors import NotFound

from .. import views
from ..deps import CurrentUser, PoolDep
from ..schemas import ModelPublic

router = APIRouter(prefix="/api/models", tags=["models"])


@router.get("", response_model=list[ModelPublic])
async def list_models(user: CurrentUser, pool: PoolDep, limit: int = Query(100, ge=1, le=500),
                      offset: int = Query(0, ge=0, le=1_000_000_000)) -> list[ModelPublic]:
    """Your registered models, newest first."""
    return [ModelPublic.from_row(r) for r in await views.models(pool, user, limit, offset)]


@router.get("/{model_id}", response_model=ModelPublic)
async def get_model(model_id: uuid.UUID, user: CurrentUser, pool: PoolDep) -> ModelPublic:
    row = await views.model(pool, user, model_id)
    if row is None:
        raise NotFound(f"model {model_id} not found; GET /api/models lists yours", field="model_id")
    return ModelPublic.from_row(row)

from __future__ import annotations

from fastapi import APIRouter

from .. import queries
from ..deps import CurrentUser, PoolDep
from ..schemas import ModelPublic

router = APIRouter(prefix="/api/models", tags=["models"])


@router.get("", response_model=list[ModelPublic])
async def list_models(user: CurrentUser, pool: PoolDep) -> list[ModelPublic]:
    return [ModelPublic(**{**dict(r), "id": str(r["id"]), "job_id": str(r["job_id"])})
            for r in await queries.models(pool, user)]

from __future__ import annotations

from fastapi import APIRouter, Request

from ..deploying import configuration_for, resolve_data
from ..deps import CurrentUser, PoolDep, SettingsDep
from ..preflighting import run_user_preflight
from ..schemas import DeploymentRequest

router = APIRouter(prefix="/api/training", tags=["preflight"])


@router.post("/preflight")
async def preflight(body: DeploymentRequest, request: Request, user: CurrentUser, pool: PoolDep,
                    settings: SettingsDep) -> dict:
    """Dry-run a configuration for a few steps on a tiny random model with the base model's architecture and
    tokenizer, on this machine's CPU: data, template and config errors show in seconds, before GPU time."""
    config = await configuration_for(pool, user, body)
    data = await resolve_data(settings, pool, user, config)
    return await run_user_preflight(request, settings, user, config.model_dump_json(), data.path, data.format.value)

from __future__ import annotations

from fastapi import APIRouter

from ..deploying import configuration_for, resolve_data
from ..deps import CurrentUser, PoolDep, SettingsDep
from ..estimating import estimate_for, model_config
from ..schemas import EstimateRequest, EstimateResponse

router = APIRouter(prefix="/api/training", tags=["estimate"])


@router.post("/estimate", response_model=EstimateResponse)
async def estimate(body: EstimateRequest, user: CurrentUser, pool: PoolDep, settings: SettingsDep) -> EstimateResponse:
    """What the job needs before it runs: peak GPU memory (weights, LoRA or full-model training state, activations,
    logits), tokens and FLOPs, and per GPU whether it fits (and if not, what to change) and how many hours it
    takes. Computed from the base model's config.json, the configuration and the data set's statistics; nothing
    is loaded or run."""
    config = await configuration_for(pool, user, body)
    data = await resolve_data(settings, pool, user, config)
    return estimate_for(config, await model_config(config), data, body.gpu_type, body.gpu_count)

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Query

from shared.errors import ValidationFailed

from ..deploying import load_configuration, request_deploy
from ..deps import BusDep, CurrentUser, PoolDep
from ..schemas import DeploymentResponse, JobPublic, LocalDeploymentRequest
from .jobs import job_public

router = APIRouter(prefix="/api/training/deploy", tags=["deploy"])

Provider = Literal["local"]


@router.post("/local", status_code=202, response_model=DeploymentResponse)
async def deploy_local(body: LocalDeploymentRequest, user: CurrentUser, pool: PoolDep,
                       bus: BusDep) -> DeploymentResponse:
    """Train on this machine. The answer comes once the request is stored; follow it by ``job_id``."""
    if (body.configuration_id is None) == (body.config is None):
        raise ValidationFailed("give exactly one of configuration_id (a saved configuration) or config",
                               field="configuration_id")
    config = body.config or await load_configuration(pool, user, body.configuration_id)
    cmd = await request_deploy(pool, bus, user_id=user, provider="local", config=config,
                               configuration_id=body.configuration_id, budget_limit=body.budget_limit,
                               provider_options={})
    return DeploymentResponse(job_id=cmd.job_id, provider="local", status="queued", pod_id=cmd.job_id,
                              message=f"deploy accepted; follow GET /api/training/jobs/{cmd.job_id}")


@router.get("/{provider}", response_model=JobPublic)
async def deployment_status(provider: Provider, user: CurrentUser, pool: PoolDep,
                            pod_id: uuid.UUID = Query(..., description="The id the deploy answered with.")
                            ) -> JobPublic:
    return await job_public(pool, user, str(pod_id))

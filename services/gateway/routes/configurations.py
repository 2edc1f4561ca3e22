from __future__ import annotations

import uuid

from fastapi import APIRouter

from shared.config import TrainingConfig
from shared.errors import NotFound

from ..deploying import resolve_data
from ..deps import CurrentUser, PoolDep, SettingsDep
from ..policy import check_configuration_policy
from ..schemas import ConfigurationPublic

router = APIRouter(prefix="/api/training/configurations", tags=["configurations"])


@router.post("", status_code=201, response_model=ConfigurationPublic)
async def create_configuration(config: TrainingConfig, user: CurrentUser, pool: PoolDep,
                               settings: SettingsDep) -> ConfigurationPublic:
    """Store a TrainingConfig, in TuneFleet's spelling or the specification's (stored in TuneFleet's). It must keep
    to what this server allows; the data set it names, if any, must exist and suit its method (one that names none
    is given its data set by the deploy: ``dataset_id``)."""
    if config.data.has_source:
        await resolve_data(settings, pool, user, config)
    else:
        await check_configuration_policy(settings, pool, user, config)
    row = await pool.fetchrow(
        "INSERT INTO configurations (id, user_id, config) VALUES ($1, $2, $3) RETURNING id, created_at",
        uuid.uuid4(), user, config.model_dump(mode="json"))
    return ConfigurationPublic(id=str(row["id"]), config=config, created_at=row["created_at"])


@router.get("/{configuration_id}", response_model=ConfigurationPublic)
async def get_configuration(configuration_id: uuid.UUID, user: CurrentUser, pool: PoolDep) -> ConfigurationPublic:
    row = await pool.fetchrow("SELECT * FROM configurations WHERE id = $1 AND user_id = $2", configuration_id, user)
    if row is None:
        raise NotFound(f"configuration {configuration_id} not found")
    return ConfigurationPublic(id=str(row["id"]), config=row["config"], created_at=row["created_at"])

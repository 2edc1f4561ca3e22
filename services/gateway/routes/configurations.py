from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query

from shared.config import TrainingConfig
from shared.config_spellings import DOCUMENTED_DEFAULTS
from shared.errors import NotFound

from .. import repository
from ..deploying import resolve_data
from ..deps import BrokerDep, CurrentUser, PoolDep, SettingsDep
from ..hub_check import check_base_model
from ..policy import PLATFORM_FOLDERS, check_configuration_policy
from ..schemas import ConfigurationPublic, ConfigurationsPage

router = APIRouter(prefix="/api/training/configurations", tags=["configurations"])


async def _check(settings, pool, broker, user: str, config: TrainingConfig) -> dict | None:
    """It must keep to what this server allows; the data set it names, if any, must exist and suit its method; a
    hub base model must exist and be readable with the user's token. Returns what the Hub said."""
    if config.data.has_source:
        await resolve_data(settings, pool, user, config, PLATFORM_FOLDERS)
    else:
        await check_configuration_policy(settings, pool, user, config, PLATFORM_FOLDERS)
    checked = await check_base_model(broker, settings, user, config)
    return checked.model_dump(mode="json", exclude_none=True) if checked else None


def _public(row) -> ConfigurationPublic:
    return ConfigurationPublic(id=str(row["id"]), config=row["config"], created_at=row["created_at"],
                               updated_at=row["updated_at"], hub_check=row["hub_check"])


async def _refuse_if_used(conn, user: str, configuration_id: uuid.UUID, doing: str) -> None:
    await repository.lock_for_use(conn, "configuration", str(configuration_id))
    await repository.refuse_while_used(conn, user, f"configuration {configuration_id}", doing,
                                       config_id=str(configuration_id))


#: The body's examples in the OpenAPI: the specification's two default configurations, as it writes them.
EXAMPLES = {f"specification-{name}": {"summary": f"The specification's {name}-model default configuration",
                                      "value": body} for name, body in DOCUMENTED_DEFAULTS.items()}
ConfigurationBody = Annotated[TrainingConfig, Body(openapi_examples=EXAMPLES)]


@router.get("/presets")
async def configuration_presets(_user: CurrentUser) -> dict[str, TrainingConfig]:
    """The specification's two default configurations (small model; large model with QLoRA) in TuneFleet's
    spelling, with every default filled in: the dashboard's presets."""
    return {name: TrainingConfig.model_validate(body) for name, body in DOCUMENTED_DEFAULTS.items()}


@router.get("/schema")
async def configuration_schema(_user: CurrentUser) -> dict:
    """The JSON Schema of a TrainingConfig (every field with its type, bounds, default and description): what the
    dashboard's editor draws its form from."""
    return TrainingConfig.model_json_schema()


@router.post("", status_code=201, response_model=ConfigurationPublic)
async def create_configuration(config: ConfigurationBody, user: CurrentUser, pool: PoolDep,
                               settings: SettingsDep, broker: BrokerDep) -> ConfigurationPublic:
    """Store a TrainingConfig, in TuneFleet's spelling or the specification's (stored in TuneFleet's). It must keep
    to what this server allows; the data set it names, if any, must exist and suit its method (one that names none
    is given its data set by the deploy: ``dataset_id``). A Hugging Face Hub base model is checked with your stored
    token (PUT /api/secrets/huggingface): it must exist, be readable (gated and private repos) and have a causal-LM
    config and a tokenizer; ``hub_check`` records the revision, architecture, parameter count and gating, or that
    the Hub could not be reached and the check was skipped."""
    checked = await _check(settings, pool, broker, user, config)
    return _public(await repository.insert_configuration(pool, user, config.model_dump(mode="json"), checked))


@router.get("", response_model=ConfigurationsPage)
async def list_configurations(user: CurrentUser, pool: PoolDep, limit: int = Query(50, ge=1, le=500),
                              offset: int = Query(0, ge=0, le=1_000_000_000)) -> ConfigurationsPage:
    """Your configurations, newest first."""
    total, rows = await repository.configurations(pool, user, limit, offset)
    return ConfigurationsPage(total_count=total, limit=limit, offset=offset,
                              configurations=[_public(r) for r in rows])


@router.get("/{configuration_id}", response_model=ConfigurationPublic)
async def get_configuration(configuration_id: uuid.UUID, user: CurrentUser, pool: PoolDep) -> ConfigurationPublic:
    row = await repository.configuration(pool, user, str(configuration_id))
    if row is None:
        raise NotFound(f"configuration {configuration_id} not found")
    return _public(row)


@router.put("/{configuration_id}", response_model=ConfigurationPublic)
async def replace_configuration(configuration_id: uuid.UUID, config: ConfigurationBody, user: CurrentUser,
                                pool: PoolDep, settings: SettingsDep, broker: BrokerDep) -> ConfigurationPublic:
    """Replace a configuration, checked as on create. Refused (409) while an unfinished job was made from it: a
    job's configuration is what it was deployed with."""
    checked = await _check(settings, pool, broker, user, config)
    async with pool.acquire() as conn, conn.transaction():
        await _refuse_if_used(conn, user, configuration_id, "changed")
        row = await repository.update_configuration(conn, user, configuration_id, config.model_dump(mode="json"),
                                                    checked)
    if row is None:
        raise NotFound(f"configuration {configuration_id} not found")
    return _public(row)


@router.delete("/{configuration_id}", status_code=204)
async def delete_configuration(configuration_id: uuid.UUID, user: CurrentUser, pool: PoolDep) -> None:
    """Delete a configuration; refused (409) while an unfinished job was made from it."""
    async with pool.acquire() as conn, conn.transaction():
        await _refuse_if_used(conn, user, configuration_id, "deleted")
        if not await repository.delete_configuration(conn, user, configuration_id):
            raise NotFound(f"configuration {configuration_id} not found")

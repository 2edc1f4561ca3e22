from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body
from pydantic import ValidationError

from shared.credentials import CREDENTIALS, plain
from shared.errors import NotFound, ServiceUnavailable, ValidationFailed
from shared.sealing import seal

from .. import repository
from ..deps import CurrentUser, PoolDep, SettingsDep
from ..errors import describe_validation

router = APIRouter(prefix="/api/secrets", tags=["secrets"])


def _credentials_for(provider: str, body: dict[str, Any]):
    model = CREDENTIALS.get(provider)
    if model is None:
        raise NotFound(f"no credentials are kept for {provider!r}; use one of {', '.join(CREDENTIALS)}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = describe_validation(exc.errors(include_input=False))
        raise ValidationFailed("; ".join(f"{p['field']}: {p['problem']}" for p in problems),
                               field=problems[0]["field"]) from None


@router.put("/{provider}", status_code=204)
async def put_secret(provider: str, user: CurrentUser, pool: PoolDep, settings: SettingsDep,
                     body: dict[str, Any] = Body(...)) -> None:
    """Store your credentials for a provider, sealed so that only provider services can read them.
    They never come back out of the API."""
    credentials = _credentials_for(provider, body)
    if not settings.secrets_public_key:
        raise ServiceUnavailable("TUNEFLEET_SECRETS_PUBLIC_KEY is not set; credentials cannot be stored")
    sealed = seal(settings.secrets_public_key, plain(credentials))
    await repository.put_secret(pool, user, provider, sealed, sorted(body))


@router.get("")
async def list_secrets(user: CurrentUser, pool: PoolDep) -> list[dict]:
    """Which providers you have credentials for, and when they changed; never the values."""
    return await repository.list_secrets(pool, user)


@router.delete("/{provider}", status_code=204)
async def delete_secret(provider: str, user: CurrentUser, pool: PoolDep) -> None:
    if not await repository.delete_secret(pool, user, provider):
        raise NotFound(f"no credentials stored for {provider!r}")

"""A user's own API keys: made (the key shown once), listed by prefix, revoked by id."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from shared.errors import NotFound

from ..deps import CurrentUser, PoolDep
from ..users import MAX_OWN_KEYS, issue_api_key, list_keys, revoke_key

router = APIRouter(prefix="/api/keys", tags=["keys"])


class KeyPublic(BaseModel):
    id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(BaseModel):
    id: str
    prefix: str
    key: str = Field(description="The key: shown in this answer only (the server keeps its hash). Send it as "
                                 "'Authorization: Bearer <key>'.")
    created_at: datetime


@router.post("", status_code=201, response_model=KeyCreated)
async def create_key(user: CurrentUser, pool: PoolDep) -> KeyCreated:
    """Make yourself another key (for a CI job, a second machine), at most 100 live at once. The key is in this
    answer and nowhere else: keep it; GET /api/keys lists it by its ``prefix`` and DELETE revokes it."""
    made = await issue_api_key(pool, user, MAX_OWN_KEYS)
    return KeyCreated(id=str(made.id), prefix=made.prefix, key=made.key, created_at=made.created_at)


@router.get("", response_model=list[KeyPublic])
async def get_keys(user: CurrentUser, pool: PoolDep) -> list[KeyPublic]:
    """Your keys, each by its id and first characters; the keys themselves are never stored."""
    return [KeyPublic(id=str(r["id"]), prefix=r["prefix"], created_at=r["created_at"], revoked_at=r["revoked_at"])
            for r in await list_keys(pool, user)]


@router.delete("/{key_id}", status_code=204)
async def delete_key(key_id: uuid.UUID, user: CurrentUser, pool: PoolDep) -> None:
    """Revoke one of your keys; requests with it are refused from now on (this one included, if it was it)."""
    if not await revoke_key(pool, key_id, user):
        raise NotFound(f"no live key {key_id} of yours; GET /api/keys lists them", field="key_id")

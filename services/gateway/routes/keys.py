"""A user's own API keys: listed by prefix, revoked by id."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from shared.errors import NotFound

from ..deps import CurrentUser, PoolDep
from ..users import list_keys, revoke_key

router = APIRouter(prefix="/api/keys", tags=["keys"])


class KeyPublic(BaseModel):
    id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


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

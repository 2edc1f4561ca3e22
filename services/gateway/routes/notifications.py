"""Where a user's job emails go when a job names no ``notify_email``."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, EmailStr

from services.notifier import store
from shared.errors import NotFound

from ..deps import CurrentUser, PoolDep

router = APIRouter(prefix="/api/notifications", tags=["notifications"])


class AddressIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: EmailStr


class AddressPublic(BaseModel):
    email: str | None
    updated_at: datetime | None


@router.put("/email", response_model=AddressPublic)
async def put_email(body: AddressIn, user: CurrentUser, pool: PoolDep) -> AddressPublic:
    """Set your notification address: job emails (completed, failed, stopped at the budget, budget alerts) go
    here unless the job names its own notify_email."""
    await store.put_address(pool, user, body.email)
    return await get_email(user, pool)


@router.get("/email", response_model=AddressPublic)
async def get_email(user: CurrentUser, pool: PoolDep) -> AddressPublic:
    row = await store.get_address(pool, user)
    return AddressPublic(email=row["email"] if row else None, updated_at=row["updated_at"] if row else None)


@router.delete("/email", status_code=204)
async def delete_email(user: CurrentUser, pool: PoolDep) -> None:
    if not await store.delete_address(pool, user):
        raise NotFound("you have no notification address; PUT /api/notifications/email sets one")

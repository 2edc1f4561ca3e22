"""Route dependencies as Annotated aliases, so a route reads as its signature."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Header, Request
from faststream.nats import NatsBroker

from shared.bus import Bus
from shared.errors import Unauthorized
from shared.settings import Settings

from .users import user_for_key


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


def get_broker(request: Request) -> NatsBroker:
    return request.app.state.broker


def get_bus(request: Request) -> Bus:
    return Bus(request.app.state.broker)


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
BrokerDep = Annotated[NatsBroker, Depends(get_broker)]
BusDep = Annotated[Bus, Depends(get_bus)]


async def current_user(pool: PoolDep, authorization: Annotated[str | None, Header()] = None) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("send your API key as 'Authorization: Bearer <key>' (tunefleet keys create)")
    user = await user_for_key(pool, key.strip())
    if user is None:
        raise Unauthorized("unknown or revoked API key; create one with 'tunefleet keys create --user NAME'")
    return user


CurrentUser = Annotated[str, Depends(current_user)]

"""Route dependencies as Annotated aliases, so a route reads as its signature."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Header, Request
from faststream.nats import NatsBroker

from shared.bus import Bus
from shared.settings import Settings
from shared.storage import Store

from .auth import authenticate
from .exports import Exports


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


def get_broker(request: Request) -> NatsBroker:
    return request.app.state.broker


def get_bus(request: Request) -> Bus:
    return Bus(request.app.state.broker)


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_exports(request: Request) -> Exports:
    return request.app.state.exports


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
BrokerDep = Annotated[NatsBroker, Depends(get_broker)]
BusDep = Annotated[Bus, Depends(get_bus)]
ExportsDep = Annotated[Exports, Depends(get_exports)]


async def current_user(request: Request, pool: PoolDep,
                       authorization: Annotated[str | None, Header()] = None) -> str:
    """The user ``auth.KeyFirst`` found before the body was read (looked up here when it did not run)."""
    user = getattr(request.state, "user", None)
    return user if user is not None else await authenticate(pool, authorization)


CurrentUser = Annotated[str, Depends(current_user)]

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from shared import subjects
from shared.supervision import read_status

from ..deps import BrokerDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(broker: BrokerDep, settings: SettingsDep) -> JSONResponse:
    """200 once every service answers on its health subject; 503 naming the ones that do not. Under
    ``tunefleet up``, ``supervisor`` gives each service's restarts and last exit code."""

    async def ask(service: str) -> bool:
        if service == "gateway":
            return True
        try:
            await broker.request(None, subjects.health(service), timeout=1.0)
        except Exception:  # no responder, a time-out or a lost connection all mean "not ready"
            return False
        return True

    states = dict(zip(subjects.SERVICES, await asyncio.gather(*(ask(s) for s in subjects.SERVICES)), strict=True))
    ready = all(states.values())
    body = {"ready": ready, "services": states,
            "not_ready": [name for name, ok in states.items() if not ok]}
    supervised = (await asyncio.to_thread(read_status, settings.home)).get("services")
    if supervised:
        body["supervisor"] = supervised
    return JSONResponse(status_code=200 if ready else 503, content=body)

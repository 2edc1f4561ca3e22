from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from shared import subjects

from ..deps import BrokerDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(broker: BrokerDep) -> JSONResponse:
    """200 once every service answers on its health subject; 503 naming the ones that do not."""

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
    return JSONResponse(status_code=200 if ready else 503, content=body)

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from shared import subjects
from shared.dead_letters import DeadLetters
from shared.service import connections
from shared.supervision import read_status

from ..deps import BrokerDep, SettingsDep

router = APIRouter(tags=["health"])

ASK_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz(request: Request, broker: BrokerDep, settings: SettingsDep) -> JSONResponse:
    """200 once every service answers on its health subject and reaches PostgreSQL; 503 naming the ones that do
    not. ``connections`` gives what each service sees of NATS (connected, reconnects) and PostgreSQL;
    ``dead_letters`` how many messages no subscriber could handle (``tunefleet dead-letters list``) and the
    newest of them. Under ``tunefleet up``, ``supervisor`` gives the restarts and last exit of each service and
    of the embedded NATS and PostgreSQL."""

    async def ask(service: str) -> dict | None:
        if service == "gateway":
            seen = await connections(broker, request.app.state.pool)
            return {"ready": seen["postgres"]["ok"], "connections": seen}
        try:
            reply = await broker.request(None, subjects.health(service), timeout=ASK_TIMEOUT_S)
            return orjson.loads(reply.body)
        except Exception:  # no responder, a time-out or a lost connection all mean "not ready"
            return None

    answers = dict(zip(subjects.SERVICES, await asyncio.gather(*(ask(s) for s in subjects.SERVICES)), strict=True))
    states = {name: bool(answer and answer.get("ready")) for name, answer in answers.items()}
    ready = all(states.values())
    body = {"ready": ready, "services": states,
            "not_ready": [name for name, ok in states.items() if not ok],
            "connections": {name: answer.get("connections") if answer else None for name, answer in answers.items()},
            "dead_letters": await _dead_letters(request)}
    supervised = (await asyncio.to_thread(read_status, settings.home)).get("services")
    if supervised:
        body["supervisor"] = supervised
    return JSONResponse(status_code=200 if ready else 503, content=body)


async def _dead_letters(request: Request) -> dict:
    letters = DeadLetters(request.app.state.nc)
    try:
        count = await asyncio.wait_for(letters.count(), ASK_TIMEOUT_S)
        latest = await asyncio.wait_for(letters.latest(), ASK_TIMEOUT_S) if count else []
    except Exception as exc:  # NATS away: say so rather than fail the health answer
        return {"count": None, "error": f"{type(exc).__name__}: {exc}"[:200]}
    # where they failed, not why: an error's text may quote a message's content, and this answer needs no key
    return {"count": count, "latest": [{k: v for k, v in letter.describe().items() if k != "error"}
                                       for letter in latest]}

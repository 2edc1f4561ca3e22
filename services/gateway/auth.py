"""API keys, checked before anything else: a request without a valid key is answered 401 before its body is read,
so nobody without a key can make the gateway spool an upload or parse a large JSON body.

Routes under ``/api/bundles/`` take a signed URL instead (workloads hold no key); they check the signature first,
before they read the body. Everything outside ``/api/`` (health, docs) is open.
"""

from __future__ import annotations

import asyncpg
from fastapi.responses import JSONResponse

from shared.errors import Unauthorized
from shared.waiting import OUTAGE

from .errors import outage_response
from .users import user_for_key

SIGNED_PREFIX = "/api/bundles/"


def needs_key(path: str) -> bool:
    return path.startswith("/api/") and not path.startswith(SIGNED_PREFIX)


async def authenticate(pool: asyncpg.Pool, authorization: str | None) -> str:
    """The user whose key ``Authorization: Bearer <key>`` carries; Unauthorized otherwise."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("send your API key as 'Authorization: Bearer <key>' (tunefleet keys create)")
    user = await user_for_key(pool, key.strip())
    if user is None:
        raise Unauthorized("unknown or revoked API key; create one with 'tunefleet keys create --user NAME'")
    return user


class KeyFirst:
    """ASGI middleware: authenticate from the headers alone and keep the user in ``request.state.user``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and needs_key(scope["path"]):
            headers = dict(scope["headers"])
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            try:
                user = await authenticate(scope["app"].state.pool, authorization)
            except OUTAGE as exc:
                return await outage_response(exc)(scope, receive, send)
            except Unauthorized as exc:
                response = JSONResponse(status_code=exc.http_status, content={"detail": exc.to_dict()},
                                        headers={"WWW-Authenticate": "Bearer", "Connection": "close"})
                return await response(scope, receive, send)
            scope.setdefault("state", {})["user"] = user
        return await self.app(scope, receive, send)

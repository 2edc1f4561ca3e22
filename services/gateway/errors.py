"""Every error becomes JSON with a stable code, in one place. Nothing escapes as a bare 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from shared.errors import ServiceUnavailable, TuneFleetError
from shared.waiting import OUTAGE

log = logging.getLogger(__name__)


def describe_validation(errors: list[dict], skip_prefix: tuple[str, ...] = ("body",)) -> list[dict]:
    """Turn pydantic errors into {field, problem} with dotted field names."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if str(p) not in skip_prefix]
        out.append({"field": ".".join(loc) or "body", "problem": err.get("msg", "invalid")})
    return out


def _validation_response(items: list[dict]) -> JSONResponse:
    message = "; ".join(f"{i['field']}: {i['problem']}" for i in items)
    return JSONResponse(status_code=422, content={"detail": {"code": "validation_failed", "message": message,
                                                             "errors": items}})


#: Seconds a client is told to wait when PostgreSQL or NATS is away.
RETRY_AFTER_S = 2


def outage_response(exc: BaseException) -> JSONResponse:
    """503 for a request that met PostgreSQL or NATS restarting (or the machine refusing I/O): the same request
    may be sent again; what was accepted before is kept."""
    log.warning("a server is unavailable: %s: %s", type(exc).__name__, exc)
    error = ServiceUnavailable(f"the gateway could not reach what it needs (its database, message bus or disk: "
                               f"{type(exc).__name__}); send the same request again in {RETRY_AFTER_S} s")
    return JSONResponse(status_code=503, content={"detail": error.to_dict()},
                        headers={"Retry-After": str(RETRY_AFTER_S)})


def install_error_handlers(app: FastAPI) -> None:
    for outage in OUTAGE:
        app.add_exception_handler(outage, lambda _request, exc: outage_response(exc))

    @app.exception_handler(TuneFleetError)
    async def _tunefleet(_: Request, exc: TuneFleetError) -> JSONResponse:
        if exc.http_status >= 500:
            log.warning("%s: %s", exc.code, exc.message)
        return JSONResponse(status_code=exc.http_status, content={"detail": exc.to_dict()})

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(describe_validation(list(exc.errors()), ("body", "query", "path")))

    @app.exception_handler(ValidationError)
    async def _pydantic(_: Request, exc: ValidationError) -> JSONResponse:
        return _validation_response(describe_validation(exc.errors()))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(status_code=500, content={"detail": {"code": "internal",
                                                                 "message": "internal error; see the gateway log"}})

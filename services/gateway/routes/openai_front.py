"""One OpenAI-compatible front door for every served model: ``/v1/models``, ``/v1/chat/completions`` and
``/v1/completions`` (streaming included), authenticated with the user's API key. A call names one of the user's
servings as its ``model`` and goes to the engine that serves it, under the engine's own name and key; a model
another user serves is unknown here (404). Errors have OpenAI's shape, so OpenAI clients raise their usual
exceptions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from shared.errors import Unauthorized
from shared.waiting import OUTAGE

from .. import views
from ..auth import authenticate

router = APIRouter(prefix="/v1", tags=["openai"])


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": None}})


async def _user(request: Request, authorization: str | None) -> str | JSONResponse:
    try:
        return await authenticate(request.app.state.pool, authorization)
    except Unauthorized as exc:
        return _error(401, exc.message, "invalid_request_error")
    except OUTAGE:
        return _error(503, "the gateway cannot reach its database; retry in a few seconds", "api_error")


def _client(request: Request) -> httpx.AsyncClient:
    client = getattr(request.app.state, "engines_http", None)
    if client is None:
        client = request.app.state.engines_http = httpx.AsyncClient(
            timeout=httpx.Timeout(300.0, connect=5.0), limits=httpx.Limits(max_connections=200))
    return client


@router.get("/models")
async def list_models(request: Request, authorization: Annotated[str | None, Header()] = None):
    user = await _user(request, authorization)
    if isinstance(user, JSONResponse):
        return user
    rows = [r for r in await views.servings(request.app.state.pool, user) if r["state"] == "ready"]
    return {"object": "list", "data": [{"id": r["name"], "object": "model", "created": int(r["created_at"].timestamp()),
                                        "owned_by": user, "server_type": r["server_type"]} for r in rows]}


def _renamed(data: dict, name: str) -> bytes:
    if "model" in data:
        data["model"] = name
    return orjson.dumps(data)


async def _relay_stream(upstream: httpx.Response, name: str) -> AsyncIterator[bytes]:
    """Server-sent events from the engine, each chunk's ``model`` given back as the caller's name."""
    try:
        async for line in upstream.aiter_lines():
            if line.startswith("data: {"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    line = "data: " + _renamed(orjson.loads(line[6:]), name).decode()
            yield (line + "\n").encode()
    finally:
        await upstream.aclose()


async def _forward(request: Request, path: str, authorization: str | None) -> Response:
    user = await _user(request, authorization)
    if isinstance(user, JSONResponse):
        return user
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _error(400, "the body is not JSON: send a JSON object with model and messages (or prompt)",
                      "invalid_request_error")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _error(400, "model is required: the name of one of your servings (GET /v1/models lists them)",
                      "invalid_request_error", "model")
    name = body["model"]
    serving = await views.serving_by_name(request.app.state.pool, user, name)
    if serving is None:
        return _error(404, f"The model `{name}` does not exist: GET /v1/models lists the models you serve "
                           "(POST /api/training/deploy serves one)", "not_found_error", "model")
    if serving["state"] != "ready" or not serving["base_url"]:
        return _error(503, f"the model `{name}` is still starting; GET /api/servings/{serving['id']} says when it is "
                           "ready", "api_error", "model")
    body["model"] = serving["engine_model"]
    headers = {"Content-Type": "application/json"}
    if serving["engine_key"]:
        headers["Authorization"] = f"Bearer {serving['engine_key']}"
    client = _client(request)
    upstream_request = client.build_request("POST", f"{serving['base_url']}/{path}", content=orjson.dumps(body),
                                            headers=headers)
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.HTTPError as exc:
        return _error(502, f"the engine serving `{name}` did not answer ({type(exc).__name__}); GET "
                           f"/api/servings/{serving['id']} says its state", "api_error")
    content_type = upstream.headers.get("content-type", "application/json")
    if upstream.status_code == 200 and content_type.startswith("text/event-stream"):
        return StreamingResponse(_relay_stream(upstream, name), media_type="text/event-stream")
    raw = await upstream.aread()
    await upstream.aclose()
    if upstream.status_code != 200:
        try:
            error = orjson.loads(raw).get("error")
            message = error.get("message") if isinstance(error, dict) else str(error)
        except (orjson.JSONDecodeError, AttributeError):
            message = raw.decode(errors="replace")[:500]
        status = upstream.status_code if 400 <= upstream.status_code < 500 and upstream.status_code != 401 else 502
        return _error(status, f"the engine refused the call: {message}", "invalid_request_error" if status < 500
                      else "api_error")
    try:
        return Response(_renamed(orjson.loads(raw), name), media_type="application/json")
    except orjson.JSONDecodeError:
        return _error(502, "the engine answered something that is not JSON", "api_error")


@router.post("/chat/completions")
async def chat_completions(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
    return await _forward(request, "chat/completions", authorization)


@router.post("/completions")
async def completions(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
    return await _forward(request, "completions", authorization)

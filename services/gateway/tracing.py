"""A server span around every API request, so a deploy's trace starts at the HTTP call."""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode


class ServerSpans:
    """ASGI middleware: a server span around every request but health checks (a plain wrapper: Starlette's
    ``BaseHTTPMiddleware`` would move each response through a task and a stream)."""

    def __init__(self, app, tracer: trace.Tracer):
        self.app, self.tracer = app, tracer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/healthz":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        method, route = scope["method"], scope["path"]
        with self.tracer.start_as_current_span(f"{method} {route}", kind=SpanKind.SERVER,
                                               context=extract(headers)) as span:
            span.set_attribute("http.request.method", method)
            span.set_attribute("url.path", route)

            async def sending(message):
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            return await self.app(scope, receive, sending)


def install_tracing(app: FastAPI, tracer_provider: TracerProvider | None = None) -> None:
    app.add_middleware(ServerSpans, tracer=trace.get_tracer("tunefleet.gateway", tracer_provider=tracer_provider))

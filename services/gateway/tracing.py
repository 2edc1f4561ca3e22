"""A server span around every API request, so a deploy's trace starts at the HTTP call."""

from __future__ import annotations

from fastapi import FastAPI, Request
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode


def install_tracing(app: FastAPI, tracer_provider: TracerProvider | None = None) -> None:
    tracer = trace.get_tracer("tunefleet.gateway", tracer_provider=tracer_provider)

    @app.middleware("http")
    async def _span(request: Request, call_next):
        if request.url.path == "/healthz":
            return await call_next(request)
        route = request.url.path
        with tracer.start_as_current_span(f"{request.method} {route}", kind=SpanKind.SERVER,
                                          context=extract(dict(request.headers))) as span:
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("url.path", route)
            response = await call_next(request)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response

"""OpenTelemetry set-up. The exporter is chosen by settings: none, console or otlp."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

from shared.settings import Settings


def _exporter(settings: Settings) -> SpanExporter | None:
    kind = settings.otel_exporter.lower()
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=settings.otel_endpoint) if settings.otel_endpoint else OTLPSpanExporter()
    raise ValueError(f"TUNEFLEET_OTEL_EXPORTER={settings.otel_exporter!r}: use none, console or otlp")


def make_tracer_provider(service: str, settings: Settings, exporter: SpanExporter | None = None) -> TracerProvider:
    """A tracer provider for one service; ``exporter`` overrides the configured one (tests pass one). With no
    exporter, spans are not recorded (the trace context still travels, for services that do export)."""
    chosen = exporter or _exporter(settings)
    provider = TracerProvider(resource=Resource.create({"service.name": f"tunefleet-{service}"}),
                              sampler=ParentBased(ALWAYS_ON) if chosen is not None else ALWAYS_OFF)
    if chosen is not None:
        provider.add_span_processor(BatchSpanProcessor(chosen))
    return provider


def setup_tracing(service: str, settings: Settings) -> TracerProvider:
    provider = make_tracer_provider(service, settings)
    trace.set_tracer_provider(provider)
    return provider

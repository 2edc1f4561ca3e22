"""Run ingest with uvicorn: one process, or ``TUNEFLEET_INGEST_WORKERS`` processes sharing the port."""

from __future__ import annotations

import gc

import uvicorn
from fastapi import FastAPI

from shared.service import configure_logging
from shared.settings import Settings
from shared.telemetry import setup_tracing

from .app import create_app
from .config import IngestConfig


def app_from_env() -> FastAPI:
    """The app of one worker process, configured from the environment."""
    settings = Settings()
    configure_logging(settings, "metrics_ingest")
    setup_tracing("metrics_ingest", settings)
    app = create_app(settings, IngestConfig())
    gc.freeze()  # the modules' objects live for ever: keep the collector from walking them during every batch
    return app


def main() -> None:
    settings, config = Settings(), IngestConfig()
    if config.workers == 1:
        app = app_from_env()
        uvicorn.run(app, host=settings.ingest_host, port=settings.ingest_port, log_level=settings.log_level.lower())
    else:
        uvicorn.run("services.metrics_ingest.server:app_from_env", factory=True, workers=config.workers,
                    host=settings.ingest_host, port=settings.ingest_port, log_level=settings.log_level.lower())

import uvicorn

from shared.service import configure_logging
from shared.settings import Settings
from shared.telemetry import setup_tracing

from .app import create_app

if __name__ == "__main__":
    settings = Settings()
    configure_logging(settings, "metrics_ingest")
    setup_tracing("metrics_ingest", settings)
    uvicorn.run(create_app(settings), host=settings.ingest_host, port=settings.ingest_port,
                log_level=settings.log_level.lower())

import logging

import uvicorn

from shared.service import configure_logging
from shared.settings import Settings
from shared.telemetry import setup_tracing

from .accesslog import RedactSignatures
from .app import create_app

if __name__ == "__main__":
    settings = Settings()
    configure_logging(settings, "gateway")
    provider = setup_tracing("gateway", settings)
    config = uvicorn.Config(create_app(settings, provider), host=settings.gateway_host, port=settings.gateway_port,
                            log_level=settings.log_level.lower())  # configures uvicorn's loggers
    logging.getLogger("uvicorn.access").addFilter(RedactSignatures())
    uvicorn.Server(config).run()

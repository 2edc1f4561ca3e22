"""The gateway: the public HTTP API (FastAPI), API keys, uploads, deploy requests and live events."""

"""Per-job bearer tokens for metrics_ingest, derived from the secret key so that no token travels on the bus."""

from __future__ import annotations

import base64
import hashlib
import hmac


def job_token(secret_key: str, job_id: str) -> str:
    digest = hmac.new(secret_key.encode(), f"tunefleet-job:{job_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def verify_job_token(secret_key: str, job_id: str, token: str) -> bool:
    return hmac.compare_digest(job_token(secret_key, job_id), token)


def hash_api_key(key: str) -> str:
    """API keys are random 32-byte strings, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(key.encode()).hexdigest()

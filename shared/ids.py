"""Deterministic ids, so that a retried step publishes the same message id and JetStream drops the copy."""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("5b6f8a52-3d1e-4f3c-9a57-2f1d1c0e7a10")


def derived_id(*parts: object) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(str(p) for p in parts)))

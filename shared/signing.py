"""Short-lived signed URLs: a workload fetches its bundle and sends back its artifacts without any key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import urlencode


def _signature(secret_key: str, method: str, path: str, expires: int) -> str:
    digest = hmac.new(secret_key.encode(), f"{method.upper()} {path} {expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def signed_url(secret_key: str, base_url: str, method: str, path: str, ttl_s: float) -> str:
    expires = int(time.time() + ttl_s)
    query = urlencode({"expires": expires, "sig": _signature(secret_key, method, path, expires)})
    return f"{base_url.rstrip('/')}{path}?{query}"


def verify(secret_key: str, method: str, path: str, expires: int, sig: str) -> bool:
    if expires < time.time():
        return False
    return hmac.compare_digest(_signature(secret_key, method, path, expires), sig)

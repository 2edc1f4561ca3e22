"""Webhook signing secrets: made at creation (``whsec_`` + base64, the Standard Webhooks form), shown to the user
once, and kept sealed (XSalsa20-Poly1305) under a key derived from TUNEFLEET_SECRET_KEY, which the gateway and the
notifier hold and provider services' sealing key pair does not open."""

from __future__ import annotations

import base64
import hashlib
import secrets

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

PREFIX = "whsec_"


class SecretUnreadable(Exception):
    """A sealed secret that this server's secret key does not open (the key changed since it was made)."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _box(secret_key: str) -> SecretBox:
    return SecretBox(hashlib.blake2b(secret_key.encode(), digest_size=SecretBox.KEY_SIZE,
                                     person=b"tf-webhooks").digest())


def seal_secret(secret_key: str, secret: str) -> bytes:
    return bytes(_box(secret_key).encrypt(secret.encode()))


def open_secret(secret_key: str, sealed: bytes) -> str:
    try:
        return _box(secret_key).decrypt(sealed).decode()
    except CryptoError as exc:
        raise SecretUnreadable("the webhook's secret cannot be opened with this server's TUNEFLEET_SECRET_KEY "
                               "(changed since the webhook was made): delete the webhook and create it again") from exc

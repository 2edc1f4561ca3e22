"""Provider credentials sealed at rest: the gateway seals with a public key, only provider services
(which hold the private key) can open them. Libsodium sealed boxes (X25519 + XSalsa20-Poly1305)."""

from __future__ import annotations

import base64

import orjson
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox


class SealingError(Exception):
    """A sealed value could not be opened (wrong key or damaged data)."""


def generate_keypair() -> tuple[str, str]:
    """Return (public_key, private_key), both base64."""
    private = PrivateKey.generate()
    return (base64.b64encode(bytes(private.public_key)).decode(), base64.b64encode(bytes(private)).decode())


def seal(public_key_b64: str, payload: dict) -> bytes:
    return SealedBox(PublicKey(base64.b64decode(public_key_b64))).encrypt(orjson.dumps(payload))


def unseal(private_key_b64: str, sealed: bytes) -> dict:
    try:
        return orjson.loads(SealedBox(PrivateKey(base64.b64decode(private_key_b64))).decrypt(sealed))
    except (CryptoError, ValueError) as exc:
        raise SealingError("the sealed credentials cannot be opened with this key") from exc

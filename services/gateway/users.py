"""Users and API keys. Keys are shown once and stored as SHA-256 hashes."""

from __future__ import annotations

import secrets

import asyncpg

from shared.tokens import hash_api_key

from . import repository

KEY_PREFIX = "tf_"


async def create_api_key(pool: asyncpg.Pool, user_id: str) -> str:
    """Create the user if needed and a new key for them; returns the key (the only time it is seen)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    await repository.insert_key(pool, user_id, hash_api_key(key), key[:8])
    return key


async def user_for_key(pool: asyncpg.Pool, key: str) -> str | None:
    return await repository.user_for_key_hash(pool, hash_api_key(key))


has_any_key = repository.has_any_key
#: Keys by id and the prefix shown when they were made (never the key or its hash); all users' without ``user_id``.
list_keys = repository.list_keys
#: Revoke a key (of ``user_id`` only, when given). True when it was live; it stops working at once.
revoke_key = repository.revoke_key

"""Users and API keys. Keys are shown once and stored as SHA-256 hashes."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.errors import QuotaExceeded
from shared.tokens import hash_api_key

from . import repository

KEY_PREFIX = "tf_"


#: Live keys one user may make for themselves (POST /api/keys); the operator's ``tunefleet keys create`` has no limit.
MAX_OWN_KEYS = 100


@dataclass(frozen=True)
class NewKey:
    """A key just made: the key itself is in no other answer, ever."""

    id: uuid.UUID
    prefix: str
    key: str
    created_at: datetime


async def issue_api_key(pool: asyncpg.Pool, user_id: str, max_live: int | None = None) -> NewKey:
    """Create the user if needed and a new key for them. ``max_live``: refuse (QuotaExceeded) a user who has that many
    live keys already."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    stored = await repository.insert_key(pool, user_id, hash_api_key(key), key[:8], max_live)
    if stored is None:
        raise QuotaExceeded(f"you have {max_live} live API keys, the most one user may make; revoke one you no longer "
                            "use (GET /api/keys lists them, DELETE /api/keys/{id} revokes one)", field="keys")
    return NewKey(stored["id"], key[:8], key, stored["created_at"])


async def create_api_key(pool: asyncpg.Pool, user_id: str) -> str:
    """Create the user if needed and a new key for them; returns the key (the only time it is seen)."""
    return (await issue_api_key(pool, user_id)).key


async def user_for_key(pool: asyncpg.Pool, key: str) -> str | None:
    return await repository.user_for_key_hash(pool, hash_api_key(key))


has_any_key = repository.has_any_key
#: Keys by id and the prefix shown when they were made (never the key or its hash); all users' without ``user_id``.
list_keys = repository.list_keys
#: Revoke a key (of ``user_id`` only, when given). True when it was live; it stops working at once.
revoke_key = repository.revoke_key

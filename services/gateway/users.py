"""Users and API keys. Keys are shown once and stored as SHA-256 hashes."""

from __future__ import annotations

import secrets
import uuid

import asyncpg

from shared.tokens import hash_api_key

KEY_PREFIX = "tf_"


async def create_api_key(pool: asyncpg.Pool, user_id: str) -> str:
    """Create the user if needed and a new key for them; returns the key (the only time it is seen)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO users (id) VALUES ($1) ON CONFLICT DO NOTHING", user_id)
        await conn.execute(
            "INSERT INTO api_keys (id, user_id, key_hash, prefix) VALUES ($1, $2, $3, $4)",
            uuid.uuid4(), user_id, hash_api_key(key), key[:8])
    return key


async def user_for_key(pool: asyncpg.Pool, key: str) -> str | None:
    return await pool.fetchval(
        "SELECT user_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_api_key(key))


async def has_any_key(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT EXISTS (SELECT 1 FROM api_keys)"))


async def list_keys(pool: asyncpg.Pool, user_id: str | None = None) -> list[asyncpg.Record]:
    """Keys by id and the prefix shown when they were made (never the key or its hash); all users' without
    ``user_id``."""
    return await pool.fetch(
        """SELECT id, user_id, prefix, created_at, revoked_at FROM api_keys
           WHERE $1::text IS NULL OR user_id = $1 ORDER BY created_at""", user_id)


async def revoke_key(pool: asyncpg.Pool, key_id: uuid.UUID, user_id: str | None = None) -> bool:
    """Revoke a key (of ``user_id`` only, when given). True when it was live; it stops working at once."""
    return await pool.fetchval(
        """UPDATE api_keys SET revoked_at = now()
           WHERE id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR user_id = $2) RETURNING true""",
        key_id, user_id) is not None

"""asyncpg pool helper and versioned SQL migrations, applied at start.

Each service owns its tables and keeps its migrations in ``services/<name>/migrations/NNNN_title.sql``.
Applied versions are recorded per service in ``schema_migrations``; an advisory lock keeps services
that start together from racing.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

_MIGRATION = re.compile(r"^(\d{4})_[\w-]+\.sql$")
_LOCK_ID = 0x7475_6E65  # "tune"

SERVICES_DIR = Path(__file__).resolve().parent.parent / "services"


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init_connection)


def migration_files(service: str) -> list[tuple[int, Path]]:
    folder = SERVICES_DIR / service / "migrations"
    found = []
    for path in sorted(folder.glob("*.sql")) if folder.is_dir() else []:
        match = _MIGRATION.match(path.name)
        if not match:
            raise RuntimeError(f"migration file {path} must be named NNNN_title.sql")
        found.append((int(match.group(1)), path))
    return found


async def apply_migrations(pool: asyncpg.Pool, *services: str) -> list[str]:
    """Apply every pending migration of ``services``; return the names applied now."""
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       service text NOT NULL, version int NOT NULL, name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (service, version))"""
            )
            for service in services:
                done = {r["version"] for r in await conn.fetch(
                    "SELECT version FROM schema_migrations WHERE service = $1", service)}
                for version, path in migration_files(service):
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(path.read_text())
                        await conn.execute(
                            "INSERT INTO schema_migrations (service, version, name) VALUES ($1, $2, $3)",
                            service, version, path.name)
                    applied_now.append(f"{service}/{path.name}")
                    log.info("applied migration %s/%s", service, path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied_now

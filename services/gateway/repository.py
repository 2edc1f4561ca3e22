"""The gateway's own tables: users and API keys, credentials, data sets, configurations and accepted deploys.
Every statement on them is here; reads of other services' tables are in ``views``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from shared.errors import Conflict
from shared.states import TERMINAL

Conn = asyncpg.Pool | asyncpg.Connection


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


# Users and API keys -------------------------------------------------------------------------------------------

async def insert_key(pool: asyncpg.Pool, user_id: str, key_hash: str, prefix: str,
                     max_live: int | None = None) -> asyncpg.Record | None:
    """Store a key (and its user, if new); returns its ``id`` and ``created_at``, or None when the user already has
    ``max_live`` live keys (counted under a per-user lock)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO users (id) VALUES ($1) ON CONFLICT DO NOTHING", user_id)
        if max_live is not None:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tunefleet-keys:' || $1))", user_id)
            live = await conn.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL",
                                       user_id)
            if live >= max_live:
                return None
        return await conn.fetchrow(
            "INSERT INTO api_keys (id, user_id, key_hash, prefix) VALUES ($1, $2, $3, $4) RETURNING id, created_at",
            uuid.uuid4(), user_id, key_hash, prefix)


async def user_for_key_hash(pool: asyncpg.Pool, key_hash: str) -> str | None:
    return await pool.fetchval("SELECT user_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash)


async def has_any_key(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT EXISTS (SELECT 1 FROM api_keys)"))


async def list_keys(pool: asyncpg.Pool, user_id: str | None = None) -> list[asyncpg.Record]:
    return await pool.fetch(
        """SELECT id, user_id, prefix, created_at, revoked_at FROM api_keys
           WHERE $1::text IS NULL OR user_id = $1 ORDER BY created_at""", user_id)


async def revoke_key(pool: asyncpg.Pool, key_id: uuid.UUID, user_id: str | None = None) -> bool:
    return await pool.fetchval(
        """UPDATE api_keys SET revoked_at = now()
           WHERE id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR user_id = $2) RETURNING true""",
        key_id, user_id) is not None


# Credentials --------------------------------------------------------------------------------------------------

async def put_secret(pool: asyncpg.Pool, user_id: str, name: str, sealed: str, fields: list[str]) -> None:
    await pool.execute(
        """INSERT INTO user_secrets (user_id, provider, sealed, fields) VALUES ($1, $2, $3, $4)
           ON CONFLICT (user_id, provider) DO UPDATE SET sealed = $3, fields = $4, updated_at = now()""",
        user_id, name, sealed, fields)


async def list_secrets(pool: asyncpg.Pool, user_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT provider, fields, updated_at FROM user_secrets WHERE user_id = $1 ORDER BY provider", user_id)
    return [dict(r) for r in rows]


async def has_secret(pool: asyncpg.Pool, user_id: str, name: str) -> bool:
    return bool(await pool.fetchval("SELECT 1 FROM user_secrets WHERE user_id = $1 AND provider = $2", user_id, name))


async def delete_secret(pool: asyncpg.Pool, user_id: str, name: str) -> bool:
    return await pool.fetchval("DELETE FROM user_secrets WHERE user_id = $1 AND provider = $2 RETURNING provider",
                               user_id, name) is not None


# Data sets ----------------------------------------------------------------------------------------------------

_DATASET = "id, filename, path, format, rows, stats, created_at"


async def insert_dataset(pool: asyncpg.Pool, dataset_id: uuid.UUID, user_id: str, filename: str, path: str,
                         data_format: str, rows: int, stats: dict) -> datetime:
    return await pool.fetchval(
        """INSERT INTO datasets (id, user_id, filename, path, format, rows, stats)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING created_at""",
        dataset_id, user_id, filename, path, data_format, rows, stats)


async def dataset(pool: Conn, user_id: str, dataset_id: str) -> asyncpg.Record | None:
    found = _uuid(dataset_id)
    if found is None:
        return None
    return await pool.fetchrow(f"SELECT {_DATASET} FROM datasets WHERE id = $1 AND user_id = $2", found, user_id)


async def datasets(pool: asyncpg.Pool, user_id: str, limit: int, offset: int) -> tuple[int, list[asyncpg.Record]]:
    total = await pool.fetchval("SELECT count(*) FROM datasets WHERE user_id = $1", user_id)
    rows = await pool.fetch(f"""SELECT {_DATASET} FROM datasets WHERE user_id = $1
                                ORDER BY created_at DESC, id LIMIT $2 OFFSET $3""", user_id, limit, offset)
    return total, rows


async def delete_dataset(conn: asyncpg.Connection, user_id: str, dataset_id: uuid.UUID) -> str | None:
    """Delete the row; returns the file's path (the caller removes it), or None when there was none."""
    return await conn.fetchval("DELETE FROM datasets WHERE id = $1 AND user_id = $2 RETURNING path",
                               dataset_id, user_id)


# Configurations -----------------------------------------------------------------------------------------------

_CONFIGURATION = "id, config, created_at, updated_at, hub_check"


async def insert_configuration(pool: asyncpg.Pool, user_id: str, config: dict,
                               hub_check: dict | None = None) -> asyncpg.Record:
    return await pool.fetchrow(
        f"""INSERT INTO configurations (id, user_id, config, hub_check) VALUES ($1, $2, $3, $4)
            RETURNING {_CONFIGURATION}""", uuid.uuid4(), user_id, config, hub_check)


async def configuration(pool: Conn, user_id: str, configuration_id: str) -> asyncpg.Record | None:
    found = _uuid(configuration_id)
    if found is None:
        return None
    return await pool.fetchrow(f"SELECT {_CONFIGURATION} FROM configurations WHERE id = $1 AND user_id = $2",
                               found, user_id)


async def configurations(pool: asyncpg.Pool, user_id: str, limit: int,
                         offset: int) -> tuple[int, list[asyncpg.Record]]:
    total = await pool.fetchval("SELECT count(*) FROM configurations WHERE user_id = $1", user_id)
    rows = await pool.fetch(f"""SELECT {_CONFIGURATION} FROM configurations WHERE user_id = $1
                                ORDER BY created_at DESC, id LIMIT $2 OFFSET $3""", user_id, limit, offset)
    return total, rows


async def update_configuration(conn: asyncpg.Connection, user_id: str, configuration_id: uuid.UUID,
                               config: dict, hub_check: dict | None = None) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""UPDATE configurations SET config = $3, hub_check = $4, updated_at = now() WHERE id = $1 AND user_id = $2
            RETURNING {_CONFIGURATION}""", configuration_id, user_id, config, hub_check)


async def delete_configuration(conn: asyncpg.Connection, user_id: str, configuration_id: uuid.UUID) -> bool:
    return await conn.fetchval("DELETE FROM configurations WHERE id = $1 AND user_id = $2 RETURNING true",
                               configuration_id, user_id) is not None


async def lock_for_use(conn: asyncpg.Connection, kind: str, key: str) -> None:
    """Within a transaction: serialise a change of a configuration or data set with deploys that use it."""
    key = str(_uuid(key) or key)  # one spelling of an id, one lock
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tunefleet-' || $1 || ':' || $2))", kind, key)


async def live_jobs_using(conn: Conn, user_id: str, *, config_id: str | None = None,
                          dataset_path: str | None = None) -> list[str]:
    """The user's unfinished jobs made from this configuration or data set: the scheduler's not ended, and deploys it
    has not made a job of yet, for an hour (one still untaken after that is stuck, as ``count_unfinished_local``
    says, and must not hold its sources for ever)."""
    rows = await conn.fetch(
        """SELECT d.job_id::text AS id FROM deploy_requests d LEFT JOIN jobs j ON j.id = d.job_id
           WHERE d.user_id = $1
             AND (($2::text IS NOT NULL AND d.message->>'config_id' = $2)
                  OR ($3::text IS NOT NULL AND d.message->>'dataset_path' = $3))
             AND (NOT j.status = ANY($4::text[]) OR (j.id IS NULL AND d.created_at > now() - interval '1 hour'))
           ORDER BY d.created_at""", user_id, config_id, dataset_path, [s.value for s in TERMINAL])
    return [r["id"] for r in rows]


async def refuse_while_used(conn: asyncpg.Connection, user_id: str, what: str, doing: str, *,
                            config_id: str | None = None, dataset_path: str | None = None) -> None:
    """Within the transaction that changes ``what``: 409 naming the unfinished jobs made from it, if any."""
    live = await live_jobs_using(conn, user_id, config_id=config_id, dataset_path=dataset_path)
    if live:
        raise Conflict(f"{what} cannot be {doing}: {len(live)} unfinished job(s) use it ({', '.join(live[:5])}); "
                       "stop them or wait for them to end", field="dataset_id" if dataset_path else "configuration_id",
                       details={"jobs": live})


# Accepted deploys (the deploy outbox) -------------------------------------------------------------------------

async def count_unfinished_local(conn: asyncpg.Connection, user_id: str) -> int:
    """Within the transaction that stores a local deploy (which it locks for the user): the user's local jobs not
    ended. A deploy the scheduler has not made a job of counts for an hour (it would be stuck, not running)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tunefleet-local-jobs:' || $1))", user_id)
    return await conn.fetchval(
        """SELECT count(*) FROM deploy_requests d LEFT JOIN jobs j ON j.id = d.job_id
           WHERE d.user_id = $1 AND d.provider = 'local'
             AND (NOT j.status = ANY($2::text[])
                  OR (j.id IS NULL AND d.created_at > now() - interval '1 hour'))""",
        user_id, [s.value for s in TERMINAL])


async def insert_deploy(conn: asyncpg.Connection, job_id: str, user_id: str, provider: str,
                        message: dict) -> datetime:
    return await conn.fetchval(
        "INSERT INTO deploy_requests (job_id, user_id, provider, message) VALUES ($1, $2, $3, $4) RETURNING created_at",
        job_id, user_id, provider, message)


async def mark_deploy_published(pool: asyncpg.Pool, job_id: str, again: int = 0) -> None:
    await pool.execute("UPDATE deploy_requests SET published_at = now(), republished = republished + $2 "
                       "WHERE job_id = $1", job_id, again)


async def deploys_to_relay(pool: asyncpg.Pool, unpublished_after_s: float, republish_after_s: float,
                           max_republish: int) -> list[asyncpg.Record]:
    """Deploys to publish (again): never published, or published and not taken by the scheduler (no job row)."""
    await pool.execute(
        """UPDATE deploy_requests d SET scheduled_at = now() FROM jobs j
           WHERE d.scheduled_at IS NULL AND j.id = d.job_id""")
    return await pool.fetch(
        """SELECT job_id, message, published_at, republished FROM deploy_requests
           WHERE scheduled_at IS NULL
             AND ((published_at IS NULL AND created_at < now() - make_interval(secs => $1))
                  OR (published_at < now() - make_interval(secs => $2) AND republished < $3))
           ORDER BY created_at LIMIT 100""", unpublished_after_s, republish_after_s, max_republish)


async def give_up_deploy(pool: asyncpg.Pool, job_id: str, max_republish: int) -> None:
    await pool.execute("UPDATE deploy_requests SET republished = $2 WHERE job_id = $1", job_id, max_republish)


async def deploy_owned(pool: asyncpg.Pool, user_id: str, job_id: str) -> bool:
    return bool(await pool.fetchval("SELECT 1 FROM deploy_requests WHERE job_id = $1 AND user_id = $2",
                                    job_id, user_id))


async def pending_deploy(pool: asyncpg.Pool, user_id: str, job_id: str,
                         provider: str | None = None) -> asyncpg.Record | None:
    """An accepted deploy, as the gateway recorded it (before the scheduler made a job of it)."""
    found = _uuid(job_id)
    if found is None:
        return None
    return await pool.fetchrow(
        """SELECT job_id AS id, provider, created_at, message->'config'->>'name' AS name, message
           FROM deploy_requests WHERE job_id = $1 AND user_id = $2 AND ($3::text IS NULL OR provider = $3)""",
        found, user_id, provider)


async def deploy_message(pool: asyncpg.Pool, user_id: str, job_id: str) -> dict | None:
    """The deploy command of the user's job as the gateway accepted it (scheduled since or not)."""
    found = _uuid(job_id)
    if found is None:
        return None
    return await pool.fetchval("SELECT message FROM deploy_requests WHERE job_id = $1 AND user_id = $2",
                               found, user_id)


async def deploy_ids(pool: asyncpg.Pool, user_id: str, limit: int, offset: int = 0) -> list[str]:
    rows = await pool.fetch("""SELECT job_id FROM deploy_requests WHERE user_id = $1
                               ORDER BY created_at DESC LIMIT $2 OFFSET $3""", user_id, limit, offset)
    return [str(r["job_id"]) for r in rows]

"""The notifier's tables: webhooks, their deliveries and attempts, users' notification addresses, and the email
outbox. Every statement on them is here; the gateway's routes use it too (they serve these tables to users)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .payloads import ALL, Notice
from .retry import PENDING, Outcome

#: Rows one claim takes.
CLAIM_BATCH = 20


def _claimable(table: str) -> str:
    """Due rows of an outbox-like table, locked for this claim and skipped by any other replica's."""
    return (f"SELECT id FROM {table} WHERE status = '{PENDING}' AND next_attempt_at <= now() "
            f"ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED")


# Webhook endpoints --------------------------------------------------------------------------------------------

async def create_endpoint(pool: asyncpg.Pool, user_id: str, url: str, events: list[str], description: str | None,
                          sealed_secret: bytes) -> asyncpg.Record:
    return await pool.fetchrow(
        """INSERT INTO webhook_endpoints (id, user_id, url, events, description, sealed_secret)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING *""",
        uuid.uuid4(), user_id, url, events, description, sealed_secret)


async def count_endpoints(pool: asyncpg.Pool, user_id: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM webhook_endpoints WHERE user_id = $1", user_id)


async def list_endpoints(pool: asyncpg.Pool, user_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM webhook_endpoints WHERE user_id = $1 ORDER BY created_at, id", user_id)


async def get_endpoint(pool: asyncpg.Pool, user_id: str, endpoint_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM webhook_endpoints WHERE id = $1 AND user_id = $2", endpoint_id, user_id)


async def delete_endpoint(pool: asyncpg.Pool, user_id: str, endpoint_id: uuid.UUID) -> bool:
    return await pool.fetchval("DELETE FROM webhook_endpoints WHERE id = $1 AND user_id = $2 RETURNING true",
                               endpoint_id, user_id) is not None


async def disable_endpoint(pool: asyncpg.Pool, endpoint_id: uuid.UUID, reason: str) -> None:
    await pool.execute("UPDATE webhook_endpoints SET disabled_at = now(), disabled_reason = $2 "
                       "WHERE id = $1 AND disabled_at IS NULL", endpoint_id, reason)


# Webhook deliveries -------------------------------------------------------------------------------------------

async def queue_deliveries(pool: asyncpg.Pool, notice: Notice, endpoint_id: uuid.UUID | None = None) -> int:
    """One delivery of ``notice`` to each live webhook of its user that asked for its type (to ``endpoint_id``
    alone, whatever it asked for, when given); a notice queued before is not queued again. Returns how many."""
    status = await pool.execute(
        """INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body)
           SELECT id, $2, $3, $4 FROM webhook_endpoints
           WHERE user_id = $1 AND disabled_at IS NULL
             AND CASE WHEN $5::uuid IS NULL THEN $3 = ANY(events) OR $6 = ANY(events) ELSE id = $5 END
           ON CONFLICT (endpoint_id, event_id) DO NOTHING""",
        notice.user_id, notice.event_id, notice.type, notice.body(), endpoint_id, ALL)
    return int(status.rsplit(" ", 1)[-1])


async def claim_deliveries(pool: asyncpg.Pool, lease_s: float) -> list[asyncpg.Record]:
    """Due deliveries with their endpoint, each held for ``lease_s`` (another claim skips it until then)."""
    return await pool.fetch(
        f"""UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $1)
            FROM webhook_endpoints e
            WHERE e.id = d.endpoint_id AND d.id IN ({_claimable("webhook_deliveries")})
            RETURNING d.id, d.event_id, d.body, d.attempts, d.first_attempt_at, d.endpoint_id, e.url,
                      e.sealed_secret, e.disabled_at, e.disabled_reason""", lease_s, CLAIM_BATCH)


@dataclass(frozen=True)
class Attempt:
    number: int
    at: datetime
    duration_ms: int
    http_status: int | None = None
    error: str | None = None
    response_body: str | None = None


async def record_attempt(pool: asyncpg.Pool, delivery_id: uuid.UUID, attempt: Attempt, outcome: Outcome) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if await _record(conn, "webhook_deliveries", delivery_id, attempt.number, attempt.at, outcome):
            await conn.execute(
                """INSERT INTO webhook_attempts (delivery_id, attempt, at, http_status, error, response_body,
                                                 duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                delivery_id, attempt.number, attempt.at, attempt.http_status, attempt.error, attempt.response_body,
                attempt.duration_ms)


async def _record(conn: asyncpg.Connection | asyncpg.Pool, table: str, row_id: uuid.UUID, tries: int, at: datetime,
                  outcome: Outcome, extra: str = "", *args) -> bool:
    """Write try number ``tries`` of a row; False when the row is gone (its webhook was deleted meanwhile) or the
    try was written already (by a process whose lease ran out before it finished)."""
    return await conn.fetchval(
        f"""UPDATE {table} SET attempts = $2, status = $3, next_attempt_at = coalesce($4, next_attempt_at),
                               first_attempt_at = coalesce(first_attempt_at, $5){extra}
            WHERE id = $1 AND attempts = $2 - 1 RETURNING true""",
        row_id, tries, outcome.status, outcome.retry_at, at, *args) is not None


async def deliveries(pool: asyncpg.Pool, user_id: str, endpoint_id: uuid.UUID, limit: int) -> list[dict]:
    """The endpoint's latest deliveries, newest first, each with its attempts in order."""
    rows = await pool.fetch(
        """SELECT d.* FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
           WHERE e.id = $1 AND e.user_id = $2 ORDER BY d.created_at DESC, d.id LIMIT $3""",
        endpoint_id, user_id, limit)
    attempts: dict[uuid.UUID, list[dict]] = {r["id"]: [] for r in rows}
    for a in await pool.fetch("SELECT * FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY attempt",
                              list(attempts)):
        attempts[a["delivery_id"]].append(dict(a))
    return [{**dict(r), "attempt_log": attempts[r["id"]]} for r in rows]


# Notification addresses ---------------------------------------------------------------------------------------

async def put_address(pool: asyncpg.Pool, user_id: str, email: str) -> None:
    await pool.execute(
        """INSERT INTO notification_addresses (user_id, email) VALUES ($1, $2)
           ON CONFLICT (user_id) DO UPDATE SET email = $2, updated_at = now()""", user_id, email)


async def get_address(pool: asyncpg.Pool, user_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT email, updated_at FROM notification_addresses WHERE user_id = $1", user_id)


async def delete_address(pool: asyncpg.Pool, user_id: str) -> bool:
    return await pool.fetchval("DELETE FROM notification_addresses WHERE user_id = $1 RETURNING true",
                               user_id) is not None


# Email outbox -------------------------------------------------------------------------------------------------

async def queue_email(pool: asyncpg.Pool, notice: Notice, recipient: str, subject: str, body: str) -> bool:
    """Queue the one email of ``notice``; False when it was queued before."""
    return await pool.fetchval(
        """INSERT INTO email_outbox (event_id, user_id, recipient, subject, body) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (event_id) DO NOTHING RETURNING true""",
        notice.event_id, notice.user_id, recipient, subject, body) is not None


async def claim_emails(pool: asyncpg.Pool, lease_s: float) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"""UPDATE email_outbox SET next_attempt_at = now() + make_interval(secs => $1)
            WHERE id IN ({_claimable("email_outbox")}) RETURNING *""", lease_s, CLAIM_BATCH)


async def record_email(pool: asyncpg.Pool, email_id: uuid.UUID, tries: int, at: datetime, outcome: Outcome,
                       error: str | None) -> None:
    await _record(pool, "email_outbox", email_id, tries, at, outcome, ", last_error = $6", error)

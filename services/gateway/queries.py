"""Read-side queries. The gateway reads the tables other services own and never writes them."""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.errors import NotFound


def _epoch_bounds(epoch: int | None) -> tuple[float | None, float | None]:
    """Epoch N holds the points with N-1 < epoch <= N (the trainer reports fractional epochs)."""
    return (None, None) if epoch is None else (epoch - 1.0, float(epoch))


async def job_row(pool: asyncpg.Pool, user_id: str, job_id: str) -> asyncpg.Record:
    """The scheduler's row, or the gateway's own record of an accepted deploy not yet scheduled."""
    row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1 AND user_id = $2", job_id, user_id)
    if row is not None:
        return row
    pending = await pool.fetchrow(
        """SELECT job_id AS id, provider, created_at, message->'config'->>'name' AS name
           FROM deploy_requests WHERE job_id = $1 AND user_id = $2""", job_id, user_id)
    if pending is None:
        raise NotFound(f"job {job_id} not found")
    return pending


async def ensure_job_visible(pool: asyncpg.Pool, user_id: str, job_id: str) -> None:
    owned = await pool.fetchval("SELECT 1 FROM deploy_requests WHERE job_id = $1 AND user_id = $2", job_id, user_id)
    if not owned:
        raise NotFound(f"job {job_id} not found")


async def history(pool: asyncpg.Pool, job_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT previous, status, reason, occurred_at FROM job_history WHERE job_id = $1 ORDER BY id", job_id)
    return [dict(r) for r in rows]


async def metrics_page(pool: asyncpg.Pool, job_id: str, *, epoch: int | None, limit: int,
                       offset: int) -> tuple[int, list[dict[str, Any]]]:
    lo, hi = _epoch_bounds(epoch)
    where = "job_id = $1 AND ($2::float8 IS NULL OR (epoch > $2 AND epoch <= $3))"
    total = await pool.fetchval(f"SELECT count(DISTINCT step) FROM metric_points WHERE {where}", job_id, lo, hi)
    rows = await pool.fetch(
        f"""SELECT step, max(epoch) AS epoch, min(recorded_at) AS recorded_at,
                   jsonb_object_agg(name, value) AS values
            FROM metric_points WHERE {where}
            GROUP BY step ORDER BY step LIMIT $4 OFFSET $5""",
        job_id, lo, hi, limit, offset)
    return total, [{"step": r["step"], "epoch": r["epoch"], "recorded_at": r["recorded_at"], **r["values"]}
                   for r in rows]


async def latest_metrics(pool: asyncpg.Pool, job_id: str) -> dict[str, Any] | None:
    rows = await pool.fetch(
        """SELECT DISTINCT ON (name) name, value, step, epoch FROM metric_points
           WHERE job_id = $1 ORDER BY name, step DESC""", job_id)
    if not rows:
        return None
    latest: dict[str, Any] = {r["name"]: r["value"] for r in rows}
    latest["step"] = max(r["step"] for r in rows)
    latest["epoch"] = max((r["epoch"] for r in rows if r["epoch"] is not None), default=None)
    return latest


async def predictions(pool: asyncpg.Pool, job_id: str, *, epoch: int | None, limit: int) -> list[dict[str, Any]]:
    lo, hi = _epoch_bounds(epoch)
    rows = await pool.fetch(
        """SELECT step, epoch, sample_index, prompt, generated, expected, scores, created_at FROM predictions
           WHERE job_id = $1 AND ($2::float8 IS NULL OR (epoch > $2 AND epoch <= $3))
           ORDER BY step DESC, sample_index LIMIT $4""", job_id, lo, hi, limit)
    return [dict(r) for r in rows]


async def models(pool: asyncpg.Pool, user_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM models WHERE user_id = $1 ORDER BY created_at DESC", user_id)


async def model_id_for_job(pool: asyncpg.Pool, job_id: str) -> str | None:
    found = await pool.fetchval("SELECT id FROM models WHERE job_id = $1", job_id)
    return str(found) if found else None

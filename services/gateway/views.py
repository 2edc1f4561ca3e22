"""Reads of the tables other services own (jobs and their history and errors, metric points, predictions,
models): the gateway reads them and never writes them. Its own tables are in ``repository``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from shared.errors import NotFound, ValidationFailed

from . import repository


def _epoch_bounds(epoch: int | None) -> tuple[float | None, float | None]:
    """Epoch N holds the points with N-1 < epoch <= N (the trainer reports fractional epochs)."""
    return (None, None) if epoch is None else (epoch - 1.0, float(epoch))


#: The longest one metrics read may run: a job that logged very many points or names cannot tie up the pool.
READ_TIMEOUT_MS = 15_000
#: Series downsampled in one read when none are named.
MAX_SERIES = 100


async def job_row(pool: asyncpg.Pool, user_id: str, job_id: str) -> asyncpg.Record:
    """The scheduler's row, or the gateway's own record of an accepted deploy not yet scheduled."""
    row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1 AND user_id = $2", job_id, user_id)
    if row is not None:
        return row
    pending = await repository.pending_deploy(pool, user_id, job_id)
    if pending is None:
        raise NotFound(f"job {job_id} not found")
    return pending


async def ensure_job_visible(pool: asyncpg.Pool, user_id: str, job_id: str) -> None:
    if not await repository.deploy_owned(pool, user_id, job_id):
        raise NotFound(f"job {job_id} not found")


async def job_for_resource(pool: asyncpg.Pool, user_id: str, provider: str, pod_id: str) -> str | None:
    """The user's job on ``provider`` with this id, or whose workload has this provider id (a pod id ...)."""
    found = await pool.fetchval(
        "SELECT id::text FROM jobs WHERE user_id = $1 AND provider = $2 AND (id::text = $3 OR resource_id = $3)",
        user_id, provider, pod_id)
    if found is None and await repository.pending_deploy(pool, user_id, pod_id, provider) is not None:
        found = pod_id
    return found


async def job_errors(pool: asyncpg.Pool, job_id: str) -> list[dict[str, Any]]:
    """Why each attempt failed or was preempted, oldest first."""
    rows = await pool.fetch(
        """SELECT attempt, phase, error_type, error_message, error_field, traceback, occurred_at
           FROM job_errors WHERE job_id = $1 ORDER BY id""", job_id)
    return [dict(r) for r in rows]


#: The filter of a log read: $1 the job, $2 one attempt (null: all), $3 a substring (null: any line).
_LOG_FILTER = """job_id = $1 AND ($2::int IS NULL OR attempt = $2)
                 AND ($3::text IS NULL OR strpos(lower(text), lower($3)) > 0)"""


async def log_lines(pool: asyncpg.Pool, job_id: str, *, after: tuple[int, int] = (0, 0), attempt: int | None = None,
                    contains: str | None = None, limit: int = 1000, newest: bool = False) -> list[asyncpg.Record]:
    """The job's first ``limit`` log lines past ``after`` (attempt, number), or with ``newest`` its last ``limit``,
    in order (attempt by attempt), of one attempt and holding ``contains`` (case-insensitive) when given: a range
    scan of the primary key."""
    order = "DESC" if newest else ""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = '{READ_TIMEOUT_MS}ms'")
        rows = await conn.fetch(
            f"""SELECT attempt, number, text FROM job_log_lines
                WHERE {_LOG_FILTER} AND (attempt, number) > ($4::int, $5::int)
                ORDER BY attempt {order}, number {order} LIMIT $6""", job_id, attempt, contains, *after, limit)
    return rows[::-1] if newest else rows


async def count_log_lines(pool: asyncpg.Pool, job_id: str, *, attempt: int | None = None,
                          contains: str | None = None) -> int:
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = '{READ_TIMEOUT_MS}ms'")
        return await conn.fetchval(f"SELECT count(*) FROM job_log_lines WHERE {_LOG_FILTER}", job_id, attempt,
                                   contains)


async def history(pool: asyncpg.Pool, job_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT previous, status, reason, occurred_at FROM job_history WHERE job_id = $1 ORDER BY id", job_id)
    return [dict(r) for r in rows]


MAX_STEP = 2_147_483_647


def _visible(n: int) -> str:
    """Which rows ``m`` a read shows, from four parameters starting at ``$n``: those of epoch ($n, $n+1] (all when
    $n is null), and of attempt $n+2; with $n+2 null, the job's curve, where an attempt's points stop at the first
    step of a later attempt ($n+3[attempt], null for the last): steps carried on from a checkpoint, or logged
    again by a retry that started over, are shown once."""
    lo, hi, attempt, bounds = (f"${n + i}" for i in range(4))
    return (f"({lo}::float8 IS NULL OR (m.epoch > {lo} AND m.epoch <= {hi})) AND "
            f"(CASE WHEN {attempt}::int IS NULL THEN m.step < COALESCE(({bounds}::int[])[m.attempt], {MAX_STEP}) "
            f"ELSE m.attempt = {attempt} END)")


#: The metric queries' filter: $1 is the job, $2 the metric names, $3..$6 as ``_visible`` says.
_EPOCH = _visible(3)


async def attempt_spans(conn: asyncpg.Pool | asyncpg.Connection, job_id: str) -> list[dict[str, Any]]:
    """Each attempt that logged points: ``{attempt, first_step, superseded_from}``, the last being the first step of a
    later attempt (from where the curve shows that attempt's points instead), or None."""
    rows = await conn.fetch("SELECT attempt, first_step FROM metric_attempts WHERE job_id = $1 ORDER BY attempt",
                            job_id)
    spans = []
    for i, r in enumerate(rows):
        later = [x["first_step"] for x in rows[i + 1:]]
        spans.append({"attempt": r["attempt"], "first_step": r["first_step"],
                      "superseded_from": min(later) if later else None})
    return spans


def _bounds(spans: list[dict[str, Any]]) -> list[int | None]:
    """The last parameter of ``_visible``: by attempt number (1-based), the step its points stop at in the curve."""
    last = max((s["attempt"] for s in spans), default=0)
    by_attempt = {s["attempt"]: s["superseded_from"] for s in spans}
    return [by_attempt.get(a) for a in range(1, last + 1)]

#: A skip scan of the primary key (job_id, name, step): one index probe per metric name, however many points.
_NAMES = """WITH RECURSIVE names(name) AS (
                SELECT min(name) FROM metric_points WHERE job_id = $1
                UNION ALL
                SELECT (SELECT min(m.name) FROM metric_points m WHERE m.job_id = $1 AND m.name > names.name)
                FROM names WHERE names.name IS NOT NULL)"""


async def metric_names(conn: asyncpg.Pool | asyncpg.Connection, job_id: str) -> list[str]:
    rows = await conn.fetch(f"{_NAMES} SELECT name FROM names WHERE name IS NOT NULL", job_id)
    return [r["name"] for r in rows]


#: More metrics than this in one page query are read by a scan of the job's points instead of a merge.
MAX_MERGED_METRICS = 64


def _merged_steps(metrics: int) -> str:
    """Each metric's steps in primary-key order, merged into one ordered stream (duplicates kept)."""
    if metrics > MAX_MERGED_METRICS:
        return f"SELECT m.step FROM metric_points m WHERE m.job_id = $1 AND m.name = ANY($2::text[]) AND {_EPOCH}"
    return " UNION ALL ".join(
        f"(SELECT m.step FROM metric_points m WHERE m.job_id = $1 AND m.name = ($2::text[])[{i}] AND {_EPOCH} "
        "ORDER BY m.step)" for i in range(1, metrics + 1))


async def metrics_page(pool: asyncpg.Pool, job_id: str, *, epoch: int | None, limit: int, offset: int,
                       names: list[str] | None = None, attempt: int | None = None
                       ) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """One page of rows, one per step with every value logged at it, the number of steps in all pages, and the
    job's attempts (``attempt_spans``). Rows are the job's curve, or one attempt's points with ``attempt``.

    The steps come from a merge of each metric's range of the primary key, grouped as they stream, so a
    page reads only up to its end and the count needs no sort; the planner is told so, as it cannot
    estimate how many distinct steps there are."""
    lo, hi = _epoch_bounds(epoch)
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute("SET LOCAL enable_hashagg = off; SET LOCAL max_parallel_workers_per_gather = 0")
        await conn.execute(f"SET LOCAL statement_timeout = '{READ_TIMEOUT_MS}ms'")
        spans = await attempt_spans(conn, job_id)
        bounds = _bounds(spans)
        if names is None:
            names = await metric_names(conn, job_id)
        if not names:
            return 0, [], spans
        merged = _merged_steps(len(names))
        total = await conn.fetchval(f"SELECT count(*) FROM (SELECT step FROM ({merged}) s GROUP BY step) c",
                                    job_id, names, lo, hi, attempt, bounds)
        steps = [r["step"] for r in await conn.fetch(
            f"SELECT step FROM ({merged}) s GROUP BY step ORDER BY step LIMIT $7 OFFSET $8",
            job_id, names, lo, hi, attempt, bounds, limit, offset)]
        if not steps:
            return total, [], spans
        rows = await conn.fetch(
            f"""SELECT step, max(attempt) AS attempt, max(epoch) AS epoch, min(recorded_at) AS recorded_at,
                       jsonb_object_agg(name, value) AS values
                FROM metric_points m
                WHERE m.job_id = $1 AND m.name = ANY($2::text[]) AND {_EPOCH} AND m.step BETWEEN $7 AND $8
                GROUP BY step ORDER BY step""",
            job_id, names, lo, hi, attempt, bounds, steps[0], steps[-1])
    return total, [{"step": r["step"], "attempt": r["attempt"], "epoch": r["epoch"], "recorded_at": r["recorded_at"],
                    **r["values"]} for r in rows], spans


#: Per metric: its first and last step (within the epoch), then for each of $5 equal step ranges its number of
#: points and the (value, step) pairs of its minimum and maximum: one range scan of the primary key
#: (job_id, name, step, attempt) per step range, so no sort and no hash of the whole series.
_BUCKETS = f"""
    WITH bounds AS MATERIALIZED (
        SELECT n.name, lo, hi, hi::int8 - lo + 1 AS span
        FROM unnest($2::text[]) AS n(name),
        LATERAL (SELECT m.step FROM metric_points m WHERE m.job_id = $1 AND m.name = n.name AND {_EPOCH}
                 ORDER BY m.step LIMIT 1) AS first(lo),
        LATERAL (SELECT m.step FROM metric_points m WHERE m.job_id = $1 AND m.name = n.name AND {_EPOCH}
                 ORDER BY m.step DESC LIMIT 1) AS last(hi))
    SELECT b.name, b.lo, b.hi, a.n, a.low, a.high
    FROM bounds b, generate_series(0, $7::int8 - 1) AS k,
    LATERAL (SELECT count(*) AS n, min(ARRAY[m.value, m.step]) AS low, max(ARRAY[m.value, m.step]) AS high
             FROM metric_points m
             WHERE m.job_id = $1 AND m.name = b.name AND {_EPOCH}
               AND m.step >= b.lo + (k * b.span + $7 - 1) / $7
               AND m.step < b.lo + ((k + 1) * b.span + $7 - 1) / $7) AS a
    WHERE a.n > 0"""

_PICKED = f"""
    SELECT m.name, m.step, m.attempt, m.epoch, m.value, m.recorded_at
    FROM unnest($2::text[], $7::int[]) AS p(name, step)
    JOIN metric_points m ON m.job_id = $1 AND m.name = p.name AND m.step = p.step AND {_EPOCH}
    UNION ALL
    SELECT m.name, m.step, m.attempt, m.epoch, m.value, m.recorded_at
    FROM metric_points m WHERE m.job_id = $1 AND m.name = ANY($8::text[]) AND {_EPOCH}"""


async def metrics_downsampled(pool: asyncpg.Pool, job_id: str, *, epoch: int | None, names: list[str] | None,
                              max_points: int, attempt: int | None = None
                              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """At most ``max_points`` points per metric that keep the curve's shape: the first and the last point,
    and for each of (max_points - 2) // 2 equal step ranges the points with the minimum and the maximum value.
    A metric with no more than ``max_points`` points comes whole. Returns rows as ``metrics_page`` does,
    per metric ``{name, raw_points, points}``, and the job's attempts."""
    lo, hi = _epoch_bounds(epoch)
    buckets = max(1, (max_points - 2) // 2)
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = '{READ_TIMEOUT_MS}ms'")
        spans = await attempt_spans(conn, job_id)
        bounds = _bounds(spans)
        if names is None:
            names = await metric_names(conn, job_id)
            if len(names) > MAX_SERIES:
                raise ValidationFailed(f"name: this job logs {len(names)} metrics, more than {MAX_SERIES} downsampled "
                                       "at once; name the ones you want with name=", field="name")
        raw: dict[str, int] = {}
        picked: dict[str, set[int]] = {}
        for r in await conn.fetch(_BUCKETS, job_id, names, lo, hi, attempt, bounds, buckets):
            raw[r["name"]] = raw.get(r["name"], 0) + r["n"]
            picked.setdefault(r["name"], set()).update((r["lo"], r["hi"], int(r["low"][1]), int(r["high"][1])))
        whole = [name for name, n in raw.items() if n <= max_points]
        pairs = [(name, step) for name, steps in picked.items() if raw[name] > max_points for step in steps]
        points = await conn.fetch(_PICKED, job_id, [p[0] for p in pairs], lo, hi, attempt, bounds,
                                  [p[1] for p in pairs], whole)
    counts: dict[str, int] = {}
    for p in points:
        counts[p["name"]] = counts.get(p["name"], 0) + 1
    series = [{"name": name, "raw_points": raw[name], "points": counts.get(name, 0)} for name in sorted(raw)]
    return _rows_by_step(points), series, spans


def _rows_by_step(points: list[asyncpg.Record]) -> list[dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for p in points:
        row = rows.get(p["step"])
        if row is None:
            row = rows[p["step"]] = {"step": p["step"], "attempt": p["attempt"], "epoch": p["epoch"],
                                     "recorded_at": p["recorded_at"]}
        else:
            if p["epoch"] is not None and (row["epoch"] is None or p["epoch"] > row["epoch"]):
                row["epoch"] = p["epoch"]
            row["recorded_at"] = min(row["recorded_at"], p["recorded_at"])
        row[p["name"]] = p["value"]
    return [rows[step] for step in sorted(rows)]


async def latest_metrics(pool: asyncpg.Pool, job_id: str) -> dict[str, Any] | None:
    """The newest point of each metric in the job's curve (a later attempt's, once it has logged one)."""
    spans = await attempt_spans(pool, job_id)
    rows = await pool.fetch(
        f"""{_NAMES}
            SELECT l.name, l.value, l.step, l.epoch FROM names n
            CROSS JOIN LATERAL (SELECT m.name, m.value, m.step, m.epoch FROM metric_points m
                                WHERE m.job_id = $1 AND m.name = n.name
                                  AND m.step < COALESCE(($2::int[])[m.attempt], {MAX_STEP})
                                ORDER BY m.step DESC, m.attempt DESC LIMIT 1) l""", job_id, _bounds(spans))
    if not rows:
        return None
    latest: dict[str, Any] = {r["name"]: r["value"] for r in rows}
    latest["step"] = max(r["step"] for r in rows)
    latest["epoch"] = max((r["epoch"] for r in rows if r["epoch"] is not None), default=None)
    if spans:
        latest["attempt"] = spans[-1]["attempt"]
    return latest


async def predictions(pool: asyncpg.Pool, job_id: str, *, epoch: int | None, limit: int,
                      attempt: int | None = None) -> list[dict[str, Any]]:
    """Newest step first; the job's curve (as ``_visible`` reads it), or one attempt's."""
    lo, hi = _epoch_bounds(epoch)
    bounds = _bounds(await attempt_spans(pool, job_id))
    rows = await pool.fetch(
        f"""SELECT step, attempt, epoch, sample_index, prompt, generated, expected, scores, created_at
            FROM predictions m WHERE m.job_id = $1 AND {_visible(2)}
            ORDER BY step DESC, sample_index LIMIT $6""",
        job_id, lo, hi, attempt, bounds, limit)
    return [dict(r) for r in rows]


async def models(pool: asyncpg.Pool, user_id: str, limit: int = 500, offset: int = 0) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM models WHERE user_id = $1 ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
                            user_id, limit, offset)


async def model(pool: asyncpg.Pool, user_id: str, model_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM models WHERE id = $1 AND user_id = $2", model_id, user_id)


async def adapter_paths(pool: asyncpg.Pool, user_id: str) -> list[str]:
    """The folders of the user's registered adapters (a configuration may start from one)."""
    return await pool.fetchval(
        "SELECT coalesce(array_agg(adapter_path), '{}') FROM models WHERE user_id = $1 AND adapter_path IS NOT NULL",
        user_id)


async def model_id_for_job(pool: asyncpg.Pool, job_id: str) -> str | None:
    found = await pool.fetchval("SELECT id FROM models WHERE job_id = $1", job_id)
    return str(found) if found else None


#: Per grouping of ``costs``: the key and, for jobs, what names them.
_COST_KEYS = {
    "provider": ("provider", "NULL::text", "NULL::text"),
    "day": ("to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')", "NULL::text", "NULL::text"),
    "job": ("id::text", "min(name)", "min(status)"),
}


async def costs(pool: asyncpg.Pool, user_id: str, start: datetime, end: datetime, group_by: str) -> list[dict]:
    """The user's jobs created in [start, end), their cost summed by ``group_by`` (provider, day or job)."""
    key, name, status = _COST_KEYS[group_by]
    rows = await pool.fetch(
        f"""SELECT {key} AS key, {name} AS name, {status} AS status, count(*)::int AS jobs,
                   coalesce(sum(cost_usd), 0)::float8 AS cost_usd,
                   count(*) FILTER (WHERE status NOT IN ('completed', 'failed', 'stopped', 'budget_exceeded'))::int
                       AS running
            FROM jobs WHERE user_id = $1 AND created_at >= $2 AND created_at < $3
            GROUP BY 1 ORDER BY {"1" if group_by == "day" else "5 DESC, 1"}""", user_id, start, end)
    return [dict(r) for r in rows]


_SERVINGS = """
    SELECT r.id, r.user_id, r.model_id, r.name, r.server_type, r.created_at, r.stop_requested_at,
           coalesce(s.state, 'starting') AS state, s.reason, s.base_url, s.engine_model, s.engine_key,
           coalesce(s.details, '{}'::jsonb) AS details,
           coalesce(nullif(s.findings, '[]'::jsonb), r.findings) AS findings,
           coalesce(s.updated_at, r.created_at) AS updated_at
      FROM serving_requests r LEFT JOIN servings s ON s.id = r.id
     WHERE r.user_id = $1
    UNION ALL
    SELECT s.id, s.user_id, s.model_id, s.name, s.server_type, s.created_at, NULL, s.state, s.reason, s.base_url,
           s.engine_model, s.engine_key, s.details, s.findings, s.updated_at
      FROM servings s
     WHERE s.user_id = $1 AND NOT EXISTS (SELECT 1 FROM serving_requests r WHERE r.id = s.id)"""


async def servings(pool: asyncpg.Pool, user_id: str) -> list[asyncpg.Record]:
    """The user's servings: those the gateway accepted (starting until the registry has them) and those the registry
    started by itself (a job configured with ``serve``), newest first."""
    return await pool.fetch(f"SELECT * FROM ({_SERVINGS}) v ORDER BY created_at DESC", user_id)


async def serving(pool: asyncpg.Pool, user_id: str, serving_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow(f"SELECT * FROM ({_SERVINGS}) v WHERE id = $2", user_id, serving_id)


async def serving_by_name(pool: asyncpg.Pool, user_id: str, name: str) -> asyncpg.Record | None:
    """The user's live serving of that name (the ``model`` of a /v1 call)."""
    return await pool.fetchrow(
        f"SELECT * FROM ({_SERVINGS}) v WHERE name = $2 AND state IN ('starting', 'ready') ORDER BY created_at DESC "
        "LIMIT 1", user_id, name)

"""A remote workload's heartbeats (stage, progress, log) in PostgreSQL, so that any gateway replica takes them and
any provider replica, on any machine, reads them: no folder is shared between the two.

* ``record`` (the gateway's heartbeat route): keeps the heartbeat's progress and the log bytes the server lacks,
  as one chunk starting where the stored log ends, and answers the stored log's size. The log only grows by what
  it lacks, as the file of ``joblog.append_at`` does: bytes sent again are kept once, and bytes past the end (some
  missing in between) are not kept; the size tells the workload where to send from.
* ``pull`` (the provider's runner, before it reads the attempt's folder): copies what is new into the folder,
  the log through ``append_at`` and the progress and log tail as their files, so everything downstream (the log
  lines the runner publishes, the progress it reports) reads the folder as before.
* ``forget``: the chunks of an attempt that ended that its folder's log holds.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg

from .bundles import LOG_TAIL, PROGRESS, write_atomically
from .joblog import append_at, log_size

#: What one ``pull`` copies at most: the rest comes at the next poll.
PULL_BYTES = 8 << 20


async def record(pool: asyncpg.Pool, job_id: str, attempt: int, *, progress: dict, log_tail: str | None,
                 log_offset: int | None, data: bytes = b"") -> int:
    """Keep one heartbeat; the size of the stored log after it. ``log_offset`` and ``data`` are the log's next
    bytes (None: this heartbeat carries only ``log_tail``, its end)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO workload_heartbeats (job_id, attempt) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                           job_id, attempt)
        size = await conn.fetchval("SELECT log_size FROM workload_heartbeats WHERE job_id = $1 AND attempt = $2 "
                                   "FOR UPDATE", job_id, attempt)  # one writer of the attempt's log at a time
        if log_offset is not None and log_offset <= size < log_offset + len(data):
            fresh = data[size - log_offset:]
            await conn.execute("INSERT INTO workload_log_chunks (job_id, attempt, start, data) VALUES ($1, $2, $3, $4)",
                               job_id, attempt, size, fresh)
            size += len(fresh)
        await conn.execute(
            """UPDATE workload_heartbeats SET progress = $3, log_tail = $4, log_size = $5, updated_at = now()
               WHERE job_id = $1 AND attempt = $2""",
            job_id, attempt, progress, None if log_offset is not None else log_tail, size)
    return size


async def pull(pool: asyncpg.Pool, folder: Path, job_id: str, attempt: int) -> None:
    """Bring the attempt's stored heartbeats into ``folder``: its log's new bytes, its progress and its log tail (a
    workload that sends its whole log has none: the log's end is its tail)."""
    row = await pool.fetchrow("SELECT progress, log_tail, log_size FROM workload_heartbeats "
                              "WHERE job_id = $1 AND attempt = $2", job_id, attempt)
    if row is None:
        return
    have = await asyncio.to_thread(log_size, folder)
    while row["log_size"] > have:  # PULL_BYTES at a time, until the folder has all of it
        chunks = await pool.fetch(
            """SELECT start, data FROM workload_log_chunks
               WHERE job_id = $1 AND attempt = $2 AND start + length(data) > $3 AND start < $3 + $4
               ORDER BY start""", job_id, attempt, have, PULL_BYTES)
        before = have
        for chunk in chunks:
            have = await asyncio.to_thread(append_at, folder, chunk["start"], chunk["data"])
        if have == before:
            break  # nothing stored follows the folder's log (its chunks went): it stays as it is
    await asyncio.to_thread(write_atomically, folder / PROGRESS, json.dumps(row["progress"]).encode())
    if row["log_size"] or row["log_tail"] is None:
        await asyncio.to_thread((folder / LOG_TAIL).unlink, missing_ok=True)
    else:
        await asyncio.to_thread(write_atomically, folder / LOG_TAIL, row["log_tail"].encode())


async def forget(pool: asyncpg.Pool, folder: Path, job_id: str, attempt: int) -> None:
    """Delete the attempt's chunks that the folder's log already holds; any other (a beat after the last pull)
    stays for the next ``pull``."""
    have = await asyncio.to_thread(log_size, folder)
    await pool.execute("DELETE FROM workload_log_chunks WHERE job_id = $1 AND attempt = $2 "
                       "AND start + length(data) <= $3", job_id, attempt, have)

"""A job's whole log as the API gives it: pages from a cursor, and the whole text, streamed.

The lines are the scheduler's (``job_log_lines``, read through ``views``): every line each attempt's workload wrote,
numbered from 1 within its attempt. A cursor is ``ATTEMPT:NUMBER``, the last line a page gave.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg

from shared.errors import ValidationFailed

from . import views

#: Lines read at a time while the whole log is streamed.
STREAM_PAGE = 5000


def parse_cursor(after: str | None) -> tuple[int, int]:
    """(attempt, number) of an ``after`` cursor; (0, 0), before the first line, without one."""
    if after is None:
        return 0, 0
    attempt, _, number = after.partition(":")
    if not (attempt.isdigit() and number.isdigit()):
        raise ValidationFailed(f"after {after!r} is not a cursor: give the next_after of the page before "
                               "(ATTEMPT:NUMBER, e.g. 1:250), or leave it out to start at the first line",
                               field="after")
    return int(attempt), int(number)


def cursor(attempt: int, number: int) -> str:
    return f"{attempt}:{number}"


async def log_text(pool: asyncpg.Pool, job_id: str, attempt: int | None = None) -> AsyncIterator[bytes]:
    """The log as text, a page of lines at a time: each attempt after the first begins with a line that says so."""
    after, last_attempt = (0, 0), None
    while True:
        rows = await views.log_lines(pool, job_id, after=after, attempt=attempt, limit=STREAM_PAGE)
        if not rows:
            return
        out = []
        for r in rows:
            if last_attempt is not None and r["attempt"] != last_attempt:
                out.append(f"----- attempt {r['attempt']} -----")
            last_attempt = r["attempt"]
            out.append(r["text"])
        yield ("\n".join(out) + "\n").encode()
        after = (rows[-1]["attempt"], rows[-1]["number"])

"""A batch's points in PostgreSQL's binary COPY format, built a column at a time.

Rows of one series share their layout, so the rows are one template repeated, and each varying column
(step, value, and epoch or time when they vary) is written into its byte lanes with strided slice
assignment: C loops, not a Python loop per point. A series whose epochs are partly null is laid out
row by row. The column order is ``COLUMNS``.
"""

from __future__ import annotations

import struct
import sys
import uuid
from array import array
from datetime import datetime

from .batch import Batch, Series

COLUMNS = ("job_id", "name", "step", "epoch", "value", "recorded_at", "attempt")
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
PG_EPOCH_US = 946_684_800 * 1_000_000
_NULL = struct.pack(">i", -1)
_SWAP = sys.byteorder == "little"


def pg_time(t: datetime) -> int:
    """Microseconds since 2000-01-01 UTC, PostgreSQL's timestamptz (exact: a float holds today's Unix time in
    microseconds to well under one)."""
    return round(t.timestamp() * 1_000_000) - PG_EPOCH_US


def _big_endian(typecode: str, values) -> bytes:
    column = array(typecode, values)
    if _SWAP:
        column.byteswap()
    return column.tobytes()


def _series(job: bytes, s: Series, default_time: int, attempt: int) -> bytes:
    name = s.name.encode()
    n = len(s.steps)
    times = [pg_time(t) for t in s.times] if s.times is not None else None
    epochs = s.epochs
    if epochs is not None and any(e is None for e in epochs):
        if all(e is None for e in epochs):
            epochs = None
        else:
            return _rows(job, name, s, times, default_time, attempt)
    head = struct.pack(">hi16si", len(COLUMNS), 16, job, len(name)) + name
    fields: list[tuple[bytes, str, object]] = [(struct.pack(">ii", 4, 0), "i", s.steps)]
    fields.append((_NULL, "", None) if epochs is None else (struct.pack(">id", 8, 0.0), "d", epochs))
    fields.append((struct.pack(">id", 8, 0.0), "d", s.values))
    fields.append((struct.pack(">iq", 8, default_time), "q" if times is not None else "", times))
    fields.append((struct.pack(">ii", 4, attempt), "", None))
    template = head + b"".join(f[0] for f in fields)
    size = len(template)
    buf = bytearray(template * n)
    offset = len(head)
    for layout, typecode, column in fields:
        if typecode:
            raw = _big_endian(typecode, column)
            width = len(layout) - 4
            for k in range(width):
                buf[offset + 4 + k::size] = raw[k::width]
        offset += len(layout)
    return bytes(buf)


def _rows(job: bytes, name: bytes, s: Series, times: list[int] | None, default_time: int, attempt: int) -> bytes:
    head = struct.pack(">hi16si", len(COLUMNS), 16, job, len(name)) + name
    with_epoch, without = struct.Struct(">iiididiqii"), struct.Struct(">iiiidiqii")
    out = []
    for i, (step, epoch, value) in enumerate(zip(s.steps, s.epochs or (), s.values, strict=True)):
        when = times[i] if times is not None else default_time
        if epoch is None:
            out.append(head + without.pack(4, step, -1, 8, value, 8, when, 4, attempt))
        else:
            out.append(head + with_epoch.pack(4, step, 8, epoch, 8, value, 8, when, 4, attempt))
    return b"".join(out)


def copy_data(job_id: uuid.UUID, batch: Batch) -> bytes:
    """The whole COPY stream (header, rows, trailer) for the batch's points, in key order."""
    default_time = pg_time(batch.default_time)
    return HEADER + b"".join(_series(job_id.bytes, s, default_time, batch.attempt) for s in batch.series) + TRAILER

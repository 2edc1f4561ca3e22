"""A workload's whole log on the server's disk (``train.log`` in the attempt's artifacts folder), read as numbered
lines by the runner, which publishes each line once (``WorkloadLogged``) for the scheduler to keep.

How the file gets there, by provider:

* local: the trainer's stdout and stderr are written to it as the trainer runs.
* RunPod, Hugging Face Spaces, Kaggle with internet: the bootstrap's heartbeats carry the log's new bytes from an
  offset; any gateway replica keeps them in PostgreSQL and the provider's runner appends them here by ``append_at``
  (``heartbeats.pull``); the output it uploads at the end holds the whole file (``adopt_uploaded``).
* Lambda: every poll reads the new bytes of the machine's log over SFTP (``append_at``), and the end brings the
  whole file.
* Kaggle without internet: the kernel cannot reach TuneFleet and Kaggle gives its output only once it ended, so its
  log arrives whole at the end (only the log tail of the kernel's session is visible before, and not even that).

The file only ever grows by what it lacks (every writer appends from its current size), so a byte offset into it
stays valid and a line keeps its number: the runner stores how far it has read (``read_lines``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .bundles import open_report

LOG = "train.log"
#: Longer lines are cut, with an ellipsis: a line is for reading, and a batch stays small.
MAX_LINE_CHARS = 16_000
#: What one ``WorkloadLogged`` carries at most.
BATCH_BYTES = 128 * 1024
BATCH_LINES = 2000


@dataclass(frozen=True)
class Lines:
    lines: list[str]
    end: int
    """The byte offset just past the last line read: where the next read starts."""


def line_text(raw: bytes) -> str:
    """What a terminal shows of one line: UTF-8 (bad bytes replaced), after its last carriage return (a progress bar
    redrawn in place is its last state), without NUL, at most ``MAX_LINE_CHARS``."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r").rsplit("\r", 1)[-1].replace("\x00", "\ufffd")
    return text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS] + "…"


def read_lines(folder: Path, offset: int, *, final: bool = False, max_bytes: int = BATCH_BYTES,
               max_lines: int = BATCH_LINES) -> Lines:
    """The complete lines of the log from byte ``offset``, at most ``max_bytes`` and ``max_lines`` of them. A last
    line without its newline comes only with ``final`` (the workload is over) or when it is longer than
    ``max_bytes`` (then its first ``max_bytes`` make a line). Nothing when there is no log (or it is a link)."""
    fd = open_report(folder / LOG)
    if fd is None:
        return Lines([], offset)
    with os.fdopen(fd, "rb") as f:
        f.seek(offset)
        data = f.read(max_bytes)
    cut = data.rfind(b"\n") + 1
    whole_rest = final and len(data) < max_bytes
    if whole_rest or (cut == 0 and len(data) == max_bytes):  # the rest, or a line longer than a batch
        cut = len(data)
    lines, pos = [], 0
    while pos < cut and len(lines) < max_lines:
        newline = data.find(b"\n", pos, cut)
        stop = cut if newline < 0 else newline
        lines.append(line_text(data[pos:stop]))
        pos = stop + 1 if newline >= 0 else cut
    return Lines(lines, offset + pos)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One writer of the folder's log at a time, across processes (gateways, a provider)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".train.log.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def log_size(folder: Path) -> int:
    try:
        return os.lstat(folder / LOG).st_size
    except FileNotFoundError:
        return 0


def append_at(folder: Path, offset: int, data: bytes) -> int:
    """Add the bytes of ``data`` (the log's bytes from ``offset``) that the file lacks, durably (fsync); returns the
    file's size after. Bytes it has already are not written again; with ``offset`` past its end (bytes missing in
    between) nothing is written, and the size says where to send from."""
    with _locked(folder):
        fd = os.open(folder / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            fresh = data[size - offset:] if offset <= size else b""
            if fresh:
                os.write(fd, fresh)
                os.fsync(fd)
                size += len(fresh)
            return size
        finally:
            os.close(fd)


def _starts_with(path: Path, prefix_path: Path, block: int = 1 << 20) -> bool:
    """Whether the file at ``path`` begins with the whole of the file at ``prefix_path``."""
    with open(path, "rb") as whole, open(prefix_path, "rb") as prefix:
        while chunk := prefix.read(block):
            if whole.read(len(chunk)) != chunk:
                return False
    return True


def adopt_uploaded(uploaded: Path, folder: Path) -> None:
    """The log a workload's output brought (``uploaded``) replaces the one its heartbeats built only when it holds
    that one and more; otherwise the heartbeats' log stays (its lines keep their numbers) and ``uploaded`` goes."""
    target = folder / LOG
    with _locked(folder):
        if not target.exists() or (uploaded.stat().st_size > target.stat().st_size
                                   and _starts_with(uploaded, target)):
            os.replace(uploaded, target)
        else:
            uploaded.unlink()

"""Checkpoints that workloads upload as they train, kept per job so that a later attempt on another machine can
resume from the newest one. Only the newest is kept::

    {home}/checkpoints/{job_id}/checkpoint-{step}.tar.gz

An upload is a tar.gz of exactly one ``checkpoint-N/`` folder holding ``trainer_state.json``, with plain files and
folders only (no links, no absolute or parent paths); anything else is refused.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import BinaryIO

from shared.errors import PayloadTooLarge, ValidationFailed
from shared.settings import Settings

from .archives import HEADER_ALLOWANCE, open_capped

_NAME = re.compile(r"checkpoint-(\d+)")
MAX_MEMBERS = 10_000


def checkpoints_dir(settings: Settings, job_id: str) -> Path:
    return settings.home / "checkpoints" / job_id


def _step_of(path: Path) -> int:
    match = _NAME.fullmatch(path.name.removesuffix(".tar.gz"))
    return int(match.group(1)) if match else -1


def latest_checkpoint(settings: Settings, job_id: str) -> Path | None:
    folder = checkpoints_dir(settings, job_id)
    found = [p for p in folder.glob("checkpoint-*.tar.gz") if _step_of(p) >= 0] if folder.is_dir() else []
    return max(found, key=_step_of, default=None)


def inspect_checkpoint(archive: BinaryIO, max_bytes: int) -> int:
    """The step of a checkpoint archive; ValidationFailed when it is not one safe checkpoint folder,
    PayloadTooLarge past ``max_bytes`` decompressed or ``MAX_MEMBERS`` members."""
    try:
        with open_capped(archive, max_bytes) as tar:
            tops, has_state = set(), False
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise PayloadTooLarge(f"a checkpoint holds at most {MAX_MEMBERS} files")
                parts = member.name.split("/")
                if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                    raise ValidationFailed(f"checkpoint archive holds a link or unsafe path: {member.name!r}",
                                           field="body")
                tops.add(parts[0])
                has_state |= len(parts) == 2 and parts[1] == "trainer_state.json" and member.isfile()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValidationFailed(f"a checkpoint must be a tar.gz archive: {exc}", field="body") from exc
    match = _NAME.fullmatch(next(iter(tops))) if len(tops) == 1 else None
    if match is None or not has_state:
        raise ValidationFailed("a checkpoint archive must hold one checkpoint-N/ folder with trainer_state.json",
                               field="body")
    return int(match.group(1))


def store_checkpoint(settings: Settings, job_id: str, spooled: Path) -> int:
    """Keep the checkpoint archive at ``spooled`` (moved, not copied) if it is the newest of the job."""
    with open(spooled, "rb") as f:
        step = inspect_checkpoint(f, int(settings.max_artifacts_gb * 2**30) + HEADER_ALLOWANCE)
    folder = checkpoints_dir(settings, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    current = latest_checkpoint(settings, job_id)
    if current is not None and _step_of(current) >= step:
        spooled.unlink(missing_ok=True)
        return step
    target = folder / f"checkpoint-{step}.tar.gz"
    os.replace(spooled, target)
    for older in folder.glob("checkpoint-*.tar.gz"):
        if older != target:
            older.unlink(missing_ok=True)
    return step

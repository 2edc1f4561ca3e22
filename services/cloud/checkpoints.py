"""Checkpoints that workloads upload as they train, kept per job so that a later attempt on another machine can
resume from the newest one. Only the newest is kept, as an object of the store (``shared.storage``)::

    checkpoints/{job_id}/checkpoint-{step}.tar.gz

The gateway (any replica) receives an upload, checks it and stores it; a later attempt fetches it through the
gateway, which on a store that presigns redirects it to the bucket.

An upload is a tar.gz of exactly one ``checkpoint-N/`` folder holding ``trainer_state.json``, with plain files and
folders only (no links, no absolute or parent paths); anything else is refused.
"""

from __future__ import annotations

import asyncio
import re
import tarfile
from pathlib import Path
from typing import BinaryIO

from shared.errors import PayloadTooLarge, ValidationFailed
from shared.settings import Settings
from shared.storage import store_from_settings

from .archives import HEADER_ALLOWANCE, open_capped

_NAME = re.compile(r"checkpoint-(\d+)")
MAX_MEMBERS = 10_000


def checkpoint_key(job_id: str, step: int) -> str:
    return f"checkpoints/{job_id}/checkpoint-{step}.tar.gz"


def _step_of(key: str) -> int:
    match = _NAME.fullmatch(key.rsplit("/", 1)[-1].removesuffix(".tar.gz"))
    return int(match.group(1)) if match else -1


async def _stored(settings: Settings, job_id: str) -> list[str]:
    keys = await store_from_settings(settings).keys(f"checkpoints/{job_id}/")
    return [k for k in keys if _step_of(k) >= 0]


async def latest_checkpoint(settings: Settings, job_id: str) -> str | None:
    """The store key of the job's newest checkpoint; None before the first upload."""
    return max(await _stored(settings, job_id), key=_step_of, default=None)


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


async def store_checkpoint(settings: Settings, job_id: str, spooled: Path) -> int:
    """Keep the checkpoint archive at ``spooled`` if it is the newest of the job, then drop the older ones."""
    def step_of_upload() -> int:
        with open(spooled, "rb") as f:
            return inspect_checkpoint(f, int(settings.max_artifacts_gb * 2**30) + HEADER_ALLOWANCE)

    step = await asyncio.to_thread(step_of_upload)
    store = store_from_settings(settings)
    current = await latest_checkpoint(settings, job_id)
    if current is not None and _step_of(current) >= step:
        return step
    await store.put_file(checkpoint_key(job_id, step), spooled)
    for older in await _stored(settings, job_id):  # strictly older only: a concurrent newer upload stays
        if _step_of(older) < step:
            await store.delete(older)
    return step

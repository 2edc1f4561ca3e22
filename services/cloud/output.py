"""A workload's output archive, brought into its artifacts folder: from the gateway's upload route, or, on a store
that presigns (S3), from the object the workload put in the bucket (``fetch_pushed_output``)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tarfile
import uuid
from pathlib import Path

from shared.errors import PayloadTooLarge, ValidationFailed
from shared.jobspec import TrainerResult
from shared.settings import Settings
from shared.storage import StorageError, store_from_settings

from .archives import extract_tar_gz
from .bundles import RESULT, artifacts_dir, output_key, write_atomically
from .joblog import LOG, adopt_uploaded

log = logging.getLogger(__name__)

MAX_ARTIFACT_MEMBERS = 10_000


def unpack_output(archive: Path, into: Path, max_bytes: int) -> None:
    """Extract safely next to ``into``, then move the files in with result.json last: a reader that sees the
    result sees the whole output."""
    incoming = into.parent / f".incoming-{into.name}-{uuid.uuid4().hex[:8]}"
    try:
        extract_tar_gz(archive, incoming, max_bytes=max_bytes, max_members=MAX_ARTIFACT_MEMBERS)
        into.mkdir(parents=True, exist_ok=True)
        names = sorted(os.listdir(incoming), key=lambda n: n == RESULT)
        for name in names:
            if name == LOG:  # the heartbeats may have brought it already, with lines numbered from it
                adopt_uploaded(incoming / name, into)
                continue
            target = into / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(incoming / name, target)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


async def fetch_pushed_output(settings: Settings, job_id: str, attempt: int) -> bool:
    """Bring the output a workload put in the bucket into the attempt's artifacts folder, once; True when it did.
    Nothing to do on a store that does not presign (the gateway's route received the output), once the result is
    in, or while the workload has not put it yet. An archive that is too big or does not unpack safely becomes a
    failed result that says why, as the gateway's route would have refused it."""
    store = store_from_settings(settings)
    key, folder = output_key(job_id, attempt), artifacts_dir(settings, job_id, attempt)
    if not store.signs_urls or await asyncio.to_thread((folder / RESULT).exists):
        return False
    try:
        size = await store.size(key)
    except StorageError:
        return False  # not there yet
    limit = int(settings.max_artifacts_gb * 2**30)
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    if size > limit:
        await asyncio.to_thread(_refused, folder, f"the output is {size / 2**30:.1f} GiB, over this server's "
                                                  f"{settings.max_artifacts_gb:g} GiB (TUNEFLEET_MAX_ARTIFACTS_GB)")
        return True
    spooled = folder.parent / f".download-{uuid.uuid4().hex}"
    try:
        await store.get_file(key, spooled)
        await asyncio.to_thread(unpack_output, spooled, folder, limit)
    except (PayloadTooLarge, ValidationFailed, tarfile.TarError, EOFError, OSError) as exc:
        log.warning("job %s attempt %s: the output in the bucket was refused: %s", job_id, attempt, exc)
        await asyncio.to_thread(_refused, folder, f"the output could not be unpacked: {getattr(exc, 'message', exc)}")
    finally:
        await asyncio.to_thread(spooled.unlink, missing_ok=True)
    return True


def _refused(folder: Path, why: str) -> None:
    result = TrainerResult(status="failed", error_type="OutputRefused", error_message=why)
    write_atomically(folder / RESULT, result.model_dump_json().encode())

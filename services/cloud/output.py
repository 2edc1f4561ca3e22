"""A workload's output archive, brought into its artifacts folder: from the gateway's upload route, or, on a store
that presigns (S3), from the object the workload put in the bucket (``fetch_pushed_output``).

On such a store the output of every attempt that succeeded is an object of the bucket (``keep_output``: the
provider puts the folder there when the workload did not), so a service on another machine than the provider
(the model registry serving or exporting a model, the gateway giving it for download or listing its checkpoints)
brings it to its own disk the first time it needs it (``local_output``)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from shared.errors import PayloadTooLarge, ValidationFailed
from shared.jobspec import TrainerResult
from shared.settings import Settings
from shared.storage import LocalStore, StorageError, store_from_settings

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


# The output of an attempt for every machine: kept in the store, brought to a machine where it is needed ----------

#: ``.../artifacts/<job>/attempt-<n>[/<inside>]``: an output path as the provider's result names it, on any machine.
OUTPUT_PATH = re.compile(r"/artifacts/([0-9a-f-]{36})/attempt-(\d+)(?:/(.*))?$")


def _on_one_machine(settings: Settings) -> bool:
    """Whether the store is this machine's folder: every service then reads the same artifacts folder."""
    return isinstance(store_from_settings(settings), LocalStore)


async def keep_output(settings: Settings, job_id: str, attempt: int) -> None:
    """Put the attempt's output folder in the store as one archive (``output_key``), unless the workload put it
    there itself, so the services of other machines (the model registry, the gateway) find it
    (``local_output``). Nothing to do when the store is this machine's folder."""
    if _on_one_machine(settings):
        return
    store, key = store_from_settings(settings), output_key(job_id, attempt)
    if await store.exists(key):
        return
    folder = artifacts_dir(settings, job_id, attempt)
    archive = folder.parent / f".keep-{uuid.uuid4().hex}.tar.gz"
    try:
        await asyncio.to_thread(_archive_folder, folder, archive)
        await store.put_file(key, archive)
    finally:
        await asyncio.to_thread(archive.unlink, missing_ok=True)


def _archive_folder(folder: Path, archive: Path) -> None:
    """The folder's files and folders as a tar.gz, without links and the server's own dot files (locks, partials),
    with result.json last."""
    def plain(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if info.issym() or info.islnk() or Path(info.name).name.startswith("."):
            return None
        return info

    names = sorted((n for n in os.listdir(folder) if not n.startswith(".")), key=lambda n: (n == RESULT, n))
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for name in names:
            tar.add(folder / name, arcname=name, filter=plain)


def local_output(settings: Settings, path: str) -> Path:
    """``path`` (inside an attempt's output, as a result names it) on this machine: the attempt's output is
    brought from the store first if this machine does not have it. Any other path is given back as it is."""
    found = OUTPUT_PATH.search(path)
    if found is None or _on_one_machine(settings):
        return Path(path)
    job_id, attempt, inside = found.group(1), int(found.group(2)), found.group(3)
    if inside and ".." in Path(inside).parts:
        return Path(path)  # not a path inside the output: nothing to bring
    folder = artifacts_dir(settings, job_id, attempt)
    here = folder / inside if inside else folder
    with _attempt_lock(folder):
        if not (folder / RESULT).exists():
            _bring(settings, job_id, attempt, folder)
    return here


def _bring(settings: Settings, job_id: str, attempt: int, folder: Path) -> None:
    """The stored output into ``folder``, within the server's limit. A failure is logged, never raised: the
    caller then finds no files, and says so (a 404, a serving that fails with why); the next call tries again."""
    from botocore.exceptions import BotoCoreError, ClientError

    store, key = store_from_settings(settings), output_key(job_id, attempt)
    limit = int(settings.max_artifacts_gb * 2**30)
    spooled = folder.parent / f".fetch-{uuid.uuid4().hex}"
    try:
        size = store.size_of(key)
        if size > limit:
            raise PayloadTooLarge(f"the stored output is {size / 2**30:.1f} GiB, over TUNEFLEET_MAX_ARTIFACTS_GB")
        store.copy_to(key, spooled)
        unpack_output(spooled, folder, limit)
    except StorageError:
        log.warning("job %s attempt %s: its output is neither here nor in the store", job_id, attempt)
    except (PayloadTooLarge, ValidationFailed, tarfile.TarError, EOFError, OSError, BotoCoreError,
            ClientError) as exc:
        log.warning("job %s attempt %s: its stored output could not be brought here: %s", job_id, attempt,
                    getattr(exc, "message", exc))
    finally:
        spooled.unlink(missing_ok=True)
        Path(f"{spooled}.partial").unlink(missing_ok=True)


@contextlib.contextmanager
def _attempt_lock(folder: Path) -> Iterator[None]:
    """One process of this machine brings an attempt's output at a time; the others then find it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.parent / f".{folder.name}.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

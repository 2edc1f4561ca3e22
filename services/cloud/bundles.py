"""Job bundles, the signed URLs a workload uses, and the reports it leaves, on the data folder's disk.

Layout::

    {home}/bundles/{job_id}/attempt-{n}/     spec.json (owner-only: it holds the ingest token), data.jsonl,
                                             and for remote workloads bootstrap.py, manifest.json, wheels/*.whl
    {home}/bundles/{job_id}/attempt-{n}.tar.gz   the same, as a pod fetches it
    {home}/artifacts/{job_id}/attempt-{n}/   what the workload reports: result.json (the end), log-tail.txt,
                                             progress.json, and its output (adapter/, metadata.json, ...)

A local trainer writes its output straight into the artifacts folder; a remote one sends it through signed
URLs (RunPod) or has it fetched (Lambda).

A remote bundle's archive is also an object of the store (``shared.storage``), ``bundles/{job_id}/attempt-{n}.tar.gz``,
so any gateway replica serves it. On a store that signs its own URLs (S3), a workload fetches its bundle and sends
its output (``artifacts/{job_id}/attempt-{n}/output.tar.gz``) straight to the bucket through presigned URLs, and the
provider brings the output into the artifacts folder (``fetch_pushed_output``): the gigabytes never flow through
the gateway. An output larger than ``TUNEFLEET_S3_PART_MB`` is sent as a multipart upload: the gateway's signed
``output-upload`` route starts it, presigns the parts' PUTs in batches and joins them; each part is retried alone.
Heartbeats, logs and checkpoints still go to the gateway's signed routes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import trainer.bootstrap
from shared.events import ProvisionJob
from shared.jobspec import JobSpec, TrainerResult
from shared.settings import Settings
from shared.signing import signed_url
from shared.storage import copy_out, store_from_settings

from .wheel import build_trainer_wheel

#: Signed URLs live as long as a long training run: a restarted container fetches its bundle again.
URL_TTL_S = 7 * 24 * 3600
BOOTSTRAP_SOURCE = Path(trainer.bootstrap.__file__)
LOG_TAIL = "log-tail.txt"
PROGRESS = "progress.json"
RESULT = "result.json"


def bundle_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    return settings.home / "bundles" / job_id / f"attempt-{attempt}"


def bundle_archive(settings: Settings, job_id: str, attempt: int) -> Path:
    return settings.home / "bundles" / job_id / f"attempt-{attempt}.tar.gz"


def artifacts_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    return settings.home / "artifacts" / job_id / f"attempt-{attempt}"


def bundle_key(job_id: str, attempt: int) -> str:
    """The bundle's archive in the store."""
    return f"bundles/{job_id}/attempt-{attempt}.tar.gz"


def output_key(job_id: str, attempt: int) -> str:
    """Where a workload puts its output (a tar.gz) through a presigned URL."""
    return f"artifacts/{job_id}/attempt-{attempt}/output.tar.gz"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def write_bundle(settings: Settings, cmd: ProvisionJob, *, remote: bool, ingest_token: str,
                 resume_from: str | None = None, offline: bool = False) -> Path:
    """Lay out one attempt's bundle. A remote bundle carries the trainer wheel and the bootstrap, uses paths
    relative to itself, resumes from the newest checkpoint it finds in ``output/checkpoints`` (fetched there
    by the bootstrap, or left on a restarted container's volume) and uploads each checkpoint it saves. A local
    one points at this machine's files and resumes from ``resume_from``. An ``offline`` one (a machine that cannot
    reach TuneFleet) has no ingest URL, token or checkpoint upload: its trainer spools every batch into its output,
    and nothing secret travels in it."""
    folder = bundle_dir(settings, cmd.job_id, cmd.attempt)
    folder.mkdir(parents=True, exist_ok=True)
    copy_out(settings, cmd.dataset_path, folder / "data.jsonl")  # a stored object, or a file of this machine
    output = artifacts_dir(settings, cmd.job_id, cmd.attempt)
    if remote:
        key, base = settings.require_secret_key(), settings.public_url
        spec = JobSpec(job_id=cmd.job_id, attempt=cmd.attempt, config=cmd.config, dataset_path="data.jsonl",
                       dataset_format=cmd.dataset_format, output_dir="output",
                       ingest_url=None if offline else settings.ingest_url,
                       ingest_token=None if offline else ingest_token, resume_from_checkpoint="latest",
                       checkpoint_upload_url=None if offline else signed_url(
                           key, base, "PUT", _path(cmd.job_id, cmd.attempt, "checkpoint"), URL_TTL_S))
        wheel = build_trainer_wheel(settings.home / "cache")
        (folder / "wheels").mkdir(exist_ok=True)
        shutil.copyfile(wheel.path, folder / "wheels" / wheel.path.name)
        shutil.copyfile(BOOTSTRAP_SOURCE, folder / "bootstrap.py")
        (folder / "manifest.json").write_text(json.dumps(
            {"trainer_hash": wheel.tree_hash, "wheel": f"wheels/{wheel.path.name}",
             "requirements": list(wheel.requirements)}, indent=2))
    else:
        output.mkdir(parents=True, exist_ok=True)
        spec = JobSpec(job_id=cmd.job_id, attempt=cmd.attempt, config=cmd.config,
                       dataset_path=str(folder / "data.jsonl"), dataset_format=cmd.dataset_format,
                       output_dir=str(output), ingest_url=settings.ingest_url, ingest_token=ingest_token,
                       resume_from_checkpoint=resume_from, public_addresses_only=not settings.allow_private_urls)
    _write_private(folder / "spec.json", spec.model_dump_json(indent=2))
    if remote:
        _archive(settings, folder, cmd.job_id, cmd.attempt)
    return folder


def _archive(settings: Settings, folder: Path, job_id: str, attempt: int) -> None:
    """The bundle folder as its tar.gz beside it, then in the store, where the gateway (any replica) and a
    presigned URL serve it."""
    archive = bundle_archive(settings, job_id, attempt)
    partial = archive.with_suffix(".partial")
    with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    os.chmod(partial, 0o600)
    os.replace(partial, archive)
    store_from_settings(settings).copy_from(archive, bundle_key(job_id, attempt))


def add_bundle_env(settings: Settings, job_id: str, attempt: int, env: dict[str, str]) -> None:
    """Put ``env`` in the attempt's bundle as ``env.json`` (the bootstrap reads it beside itself), for a platform
    where the workload's environment would be a file pushed to the platform: it then travels only through the
    bundle's signed URL, like the ingest token in spec.json."""
    folder = bundle_dir(settings, job_id, attempt)
    _write_private(folder / "env.json", json.dumps(env))
    _archive(settings, folder, job_id, attempt)


def bundle_url(settings: Settings, job_id: str, attempt: int, ttl_s: float) -> str:
    """A GET of the attempt's bundle that lives ``ttl_s``: presigned by the store where it signs its own URLs,
    else a signed URL of the gateway's."""
    return store_from_settings(settings).presign_get(bundle_key(job_id, attempt), int(ttl_s)) or signed_url(
        settings.require_secret_key(), settings.public_url, "GET", _path(job_id, attempt, "bundle.tar.gz"), ttl_s)


def _path(job_id: str, attempt: int, what: str) -> str:
    return f"/api/bundles/{job_id}/{attempt}/{what}"


def workload_env(settings: Settings, job_id: str, attempt: int, *, resume: bool, push: bool) -> dict[str, str]:
    """What a remote workload gets as data: where to fetch what it needs and, with ``push``, where to send its
    reports (a workload whose provider fetches them, as over SSH, keeps them on its disk)."""
    key, base = settings.require_secret_key(), settings.public_url

    store = store_from_settings(settings)

    def url(method: str, what: str) -> str:
        return signed_url(key, base, method, _path(job_id, attempt, what), URL_TTL_S)

    env = {"TUNEFLEET_BUNDLE_URL": store.presign_get(bundle_key(job_id, attempt), URL_TTL_S)
           or url("GET", "bundle.tar.gz")}
    if push:
        env.update(TUNEFLEET_ARTIFACTS_URL=store.presign_put(output_key(job_id, attempt), URL_TTL_S)
                   or url("PUT", "artifacts"),
                   TUNEFLEET_HEARTBEAT_URL=url("PUT", "heartbeat"), TUNEFLEET_HOLD_AFTER_EXIT="1")
        if store.signs_urls:  # a big output goes to the bucket in parts, each PUT presigned on request
            env.update(TUNEFLEET_ARTIFACTS_PARTS_URL=url("POST", "output-upload"),
                       TUNEFLEET_ARTIFACTS_PART_BYTES=str(settings.s3_part_mb * 2**20))
    if resume:
        env["TUNEFLEET_RESUME_URL"] = url("GET", "checkpoint.tar.gz")
    if settings.workload_python_url:
        env["TUNEFLEET_PYTHON_URL"] = settings.workload_python_url
        env["TUNEFLEET_PYTHON_SHA256"] = settings.workload_python_sha256 or ""
    return env


#: What the server reads of a workload's output at most, per file: the output folder may be a local trainer's own.
MAX_REPORT_BYTES = 1 << 20


def open_report(path: Path) -> int | None:
    """A file of a workload's output folder, opened for reading: a regular file only, never through a link (a
    trainer running as its own uid owns the folder, and could otherwise point the server at any of its files).
    None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symbolic link
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def read_report(path: Path, max_bytes: int = MAX_REPORT_BYTES, *, tail: bool = False) -> bytes | None:
    """The first (or, with ``tail``, the last) ``max_bytes`` of a report file (``open_report``)."""
    fd = open_report(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        if tail:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
        return f.read(max_bytes)


def read_result(folder: Path) -> TrainerResult | None:
    data = read_report(folder / RESULT)
    try:
        return TrainerResult.model_validate_json(data) if data is not None else None
    except ValueError:
        return None


def read_log_tail(folder: Path, max_bytes: int = 4000) -> str | None:
    """The newest log lines: what the workload last sent, or the tail of a local trainer's log."""
    for name in (LOG_TAIL, "train.log"):
        data = read_report(folder / name, max_bytes, tail=True)
        if data is not None:
            return data.decode("utf-8", errors="replace")
    return None


def read_progress(folder: Path) -> dict | None:
    data = read_report(folder / PROGRESS)
    try:
        progress = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return progress if isinstance(progress, dict) else None


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)

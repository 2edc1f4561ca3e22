"""Job bundles for remote workloads and the artifacts they send back, on the data folder's disk.

A bundle holds ``spec.json`` (paths relative to the bundle) and ``data.jsonl``; the workload fetches it as a
tar.gz through a signed URL and uploads its ``output/`` folder the same way. Layout::

    {home}/bundles/{job_id}/attempt-{n}/{spec.json,data.jsonl}
    {home}/artifacts/{job_id}/attempt-{n}/{result.json,adapter/,train.log,...}
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path
from typing import BinaryIO

from shared.events import ProvisionJob
from shared.jobspec import JobSpec, TrainerResult
from shared.settings import Settings
from shared.signing import signed_url

BUNDLE_TTL_S = 6 * 3600
ARTIFACTS_TTL_S = 7 * 24 * 3600


def bundle_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    return settings.home / "bundles" / job_id / f"attempt-{attempt}"


def artifacts_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    return settings.home / "artifacts" / job_id / f"attempt-{attempt}"


def write_remote_bundle(settings: Settings, cmd: ProvisionJob, *, ingest_token: str) -> Path:
    folder = bundle_dir(settings, cmd.job_id, cmd.attempt)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cmd.dataset_path, folder / "data.jsonl")
    spec = JobSpec(job_id=cmd.job_id, attempt=cmd.attempt, config=cmd.config, dataset_path="data.jsonl",
                   dataset_format=cmd.dataset_format, output_dir="output", ingest_url=settings.ingest_url,
                   ingest_token=ingest_token)  # checkpoints stay on the lost machine: a new attempt starts afresh
    fd = os.open(folder / "spec.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(spec.model_dump_json(indent=2))
    return folder


def workload_urls(settings: Settings, job_id: str, attempt: int) -> dict[str, str]:
    """The environment a remote workload gets: where to fetch its bundle, where to send artifacts and logs."""
    key, base = settings.require_secret_key(), settings.public_url
    root = f"/api/bundles/{job_id}/{attempt}"
    return {
        "TUNEFLEET_BUNDLE_URL": signed_url(key, base, "GET", f"{root}/bundle.tar.gz", BUNDLE_TTL_S),
        "TUNEFLEET_ARTIFACTS_URL": signed_url(key, base, "PUT", f"{root}/artifacts", ARTIFACTS_TTL_S),
        "TUNEFLEET_LOG_URL": signed_url(key, base, "PUT", f"{root}/log", ARTIFACTS_TTL_S),
    }


def pack(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def unpack(source: BinaryIO, into: Path) -> None:
    """Extract a tar.gz safely (no absolute paths, no links out of ``into``)."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=source, mode="r:gz") as tar:
        tar.extractall(into, filter="data")


def read_result(settings: Settings, job_id: str, attempt: int) -> TrainerResult | None:
    try:
        return TrainerResult.model_validate_json((artifacts_dir(settings, job_id, attempt) / "result.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def read_log_tail(settings: Settings, job_id: str, attempt: int, max_bytes: int = 4000) -> str | None:
    path = artifacts_dir(settings, job_id, attempt) / "log-tail.txt"
    try:
        return path.read_bytes()[-max_bytes:].decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None

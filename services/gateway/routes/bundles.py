"""Where remote workloads fetch their bundle and checkpoints and send back heartbeats, checkpoints and artifacts.
These routes take a short-lived signed URL instead of an API key: the workload holds no credential of the user's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, ValidationError

from services.cloud.archives import extract_tar_gz
from services.cloud.bundles import LOG_TAIL, PROGRESS, RESULT, artifacts_dir, bundle_archive, write_atomically
from services.cloud.checkpoints import checkpoints_dir, latest_checkpoint, store_checkpoint
from services.cloud.joblog import LOG, adopt_uploaded, append_at, log_size
from shared.errors import Conflict, NotFound, PayloadTooLarge, TuneFleetError, ValidationFailed
from shared.signing import verify

from ..deps import SettingsDep

router = APIRouter(prefix="/api/bundles", tags=["bundles"], include_in_schema=False)

MAX_ARTIFACT_MEMBERS = 10_000
MAX_HEARTBEAT_BYTES = 128 * 1024


class Forbidden(TuneFleetError):
    code = "forbidden"
    http_status = 403


class LogChunk(BaseModel):
    """Bytes of the workload's log from ``offset`` (in the server's copy: the offset the last answer gave)."""

    offset: int = Field(ge=0, le=2**53)
    data: str = Field(default="", max_length=96 * 1024, description="The bytes, base64.")


class Heartbeat(BaseModel):
    stage: str = Field(max_length=32)
    log_tail: str = Field(default="", max_length=64_000)
    log: LogChunk | None = Field(default=None, description="The log's next bytes; the server keeps the whole log "
                                                           "and answers how much of it it has.")
    progress: dict[str, Any] | None = None


class HeartbeatAnswer(BaseModel):
    log_offset: int = Field(description="The bytes of the log the server has: send the log from there.")


def _check(settings, request: Request, expires: int, sig: str) -> None:
    if not verify(settings.require_secret_key(), request.method, request.url.path, expires, sig):
        raise Forbidden("the link is invalid or has expired")


async def _spool(request: Request, target: Path, limit: int) -> None:
    """Stream the request body into ``target``, refusing it past ``limit`` bytes."""
    size = 0
    async with await anyio.open_file(target, "wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the upload is over {limit // 2**20} MiB")
            await f.write(chunk)


async def _read(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it is over ``limit`` bytes (never buffered past it)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body is over {limit // 1024} KiB")
    return bytes(body)


def _unpack_output(archive: Path, into: Path, max_bytes: int) -> None:
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


@router.get("/{job_id}/{attempt}/bundle.tar.gz")
async def get_bundle(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep,
                     expires: int = Query(...), sig: str = Query(...)) -> FileResponse:
    _check(settings, request, expires, sig)
    archive = bundle_archive(settings, str(job_id), attempt)
    if not await anyio.Path(archive).is_file():
        raise NotFound(f"no bundle for job {job_id} attempt {attempt}")
    return FileResponse(archive, media_type="application/gzip")


@router.put("/{job_id}/{attempt}/artifacts", status_code=204)
async def put_artifacts(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep,
                        expires: int = Query(...), sig: str = Query(...)) -> None:
    _check(settings, request, expires, sig)
    folder = artifacts_dir(settings, str(job_id), attempt)
    if await anyio.Path(folder / RESULT).exists():
        # The output is in: a later upload (the link lives for days) may not rewrite what was registered.
        raise Conflict(f"the output of job {job_id} attempt {attempt} was already received")
    await anyio.Path(folder.parent).mkdir(parents=True, exist_ok=True)
    spooled = folder.parent / f".upload-{uuid.uuid4().hex}"
    limit = int(settings.max_artifacts_gb * 2**30)
    try:
        await _spool(request, spooled, limit)
        await asyncio.to_thread(_unpack_output, spooled, folder, limit)
    finally:
        await anyio.Path(spooled).unlink(missing_ok=True)


@router.put("/{job_id}/{attempt}/heartbeat", response_model=HeartbeatAnswer)
async def put_heartbeat(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep,
                        expires: int = Query(...), sig: str = Query(...)) -> HeartbeatAnswer:
    """The workload's stage and progress, and its log: with ``log``, the log's next bytes, kept (on disk, synced)
    before the answer, which says how much of the log the server has; without, only ``log_tail``, its end."""
    _check(settings, request, expires, sig)
    body = await _read(request, MAX_HEARTBEAT_BYTES)
    try:
        beat = Heartbeat.model_validate_json(body)
    except ValidationError as exc:
        raise ValidationFailed(f"a heartbeat is JSON with stage, log (or log_tail) and progress: "
                               f"{exc.errors()[0]['msg']}", field="body") from exc
    folder = artifacts_dir(settings, str(job_id), attempt)
    progress = {**(beat.progress or {}), "stage": beat.stage}
    if beat.log is not None:
        try:
            data = base64.b64decode(beat.log.data, validate=True)
        except binascii.Error as exc:
            raise ValidationFailed("log.data must be the log's bytes in base64", field="log.data") from exc
        size = await asyncio.to_thread(append_at, folder, beat.log.offset, data)
        # the whole log is here now: its end is the tail (``read_log_tail``)
        await anyio.Path(folder / LOG_TAIL).unlink(missing_ok=True)
    else:
        await asyncio.to_thread(write_atomically, folder / LOG_TAIL, beat.log_tail.encode())
        size = await asyncio.to_thread(log_size, folder)
    await asyncio.to_thread(write_atomically, folder / PROGRESS, json.dumps(progress).encode())
    return HeartbeatAnswer(log_offset=size)


@router.put("/{job_id}/{attempt}/checkpoint", status_code=204)
async def put_checkpoint(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep,
                         expires: int = Query(...), sig: str = Query(...)) -> None:
    _check(settings, request, expires, sig)
    folder = checkpoints_dir(settings, str(job_id))
    await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
    spooled = folder / f".upload-{uuid.uuid4().hex}"
    try:
        await _spool(request, spooled, int(settings.max_artifacts_gb * 2**30))
        await asyncio.to_thread(store_checkpoint, settings, str(job_id), spooled)
    finally:
        await anyio.Path(spooled).unlink(missing_ok=True)


@router.get("/{job_id}/{attempt}/checkpoint.tar.gz")
async def get_checkpoint(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep,
                         expires: int = Query(...), sig: str = Query(...)) -> FileResponse:
    _check(settings, request, expires, sig)
    latest = await asyncio.to_thread(latest_checkpoint, settings, str(job_id))
    if latest is None:
        raise NotFound(f"no checkpoint of job {job_id} was uploaded")
    return FileResponse(latest, media_type="application/gzip")

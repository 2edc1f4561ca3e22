"""Where remote workloads fetch their bundle and checkpoints and send back heartbeats, checkpoints and artifacts.
These routes take a short-lived signed URL instead of an API key: the workload holds no credential of the user's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from services.cloud import heartbeats
from services.cloud.bundles import (
    RESULT,
    artifacts_dir,
    bundle_archive,
    bundle_key,
    output_key,
)
from services.cloud.checkpoints import latest_checkpoint, store_checkpoint
from services.cloud.output import unpack_output
from shared.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TuneFleetError,
    ValidationFailed,
)
from shared.signing import verify
from shared.storage import MAX_PARTS, LocalStore, part_bytes, store_from_settings

from ..deps import PoolDep, SettingsDep

router = APIRouter(prefix="/api/bundles", tags=["bundles"], include_in_schema=False)

MAX_HEARTBEAT_BYTES = 128 * 1024
#: How long the bucket URL a redirect gives lives: enough to start the download.
REDIRECT_S = 600
#: Parts signed per request of a multipart upload, and how long each part's URL lives.
SIGN_BATCH = 100
PART_URL_S = 24 * 3600  # S3 checks it when a PUT starts: a batch of parts on a slow link takes hours


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


@router.get("/{job_id}/{attempt}/bundle.tar.gz")
async def get_bundle(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep,
                     expires: int = Query(...), sig: str = Query(...)) -> Response:
    """The bundle, from the store: any replica serves it. On a store that presigns, a redirect to the bucket (a
    workload is given the presigned URL itself; this serves a URL issued before the store did)."""
    _check(settings, request, expires, sig)
    key, store = bundle_key(str(job_id), attempt), store_from_settings(settings)
    if not await store.exists(key):
        legacy = bundle_archive(settings, str(job_id), attempt)  # written before bundles were stored objects
        if isinstance(store, LocalStore) and await anyio.Path(legacy).is_file():
            return FileResponse(legacy, media_type="application/gzip")
        raise NotFound(f"no bundle for job {job_id} attempt {attempt}")
    return await _from_store(settings, key)


async def _from_store(settings, key: str) -> Response:
    """An object of the store: the file itself from a folder, else a redirect to a short-lived presigned URL."""
    store = store_from_settings(settings)
    if isinstance(store, LocalStore):
        return FileResponse(store.local_path(key), media_type="application/gzip")
    return RedirectResponse(store.presign_get(key, REDIRECT_S), status_code=307)


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
        await asyncio.to_thread(unpack_output, spooled, folder, limit)
    finally:
        await anyio.Path(spooled).unlink(missing_ok=True)


@router.put("/{job_id}/{attempt}/heartbeat", response_model=HeartbeatAnswer)
async def put_heartbeat(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep, pool: PoolDep,
                        expires: int = Query(...), sig: str = Query(...)) -> HeartbeatAnswer:
    """The workload's stage and progress, and its log: with ``log``, the log's next bytes, kept (in PostgreSQL,
    committed) before the answer, which says how much of the log the server has; without, only ``log_tail``, its
    end. Any replica takes it; the provider's runner copies it into the attempt's folder (``heartbeats.pull``)."""
    _check(settings, request, expires, sig)
    body = await _read(request, MAX_HEARTBEAT_BYTES)
    try:
        beat = Heartbeat.model_validate_json(body)
    except ValidationError as exc:
        raise ValidationFailed(f"a heartbeat is JSON with stage, log (or log_tail) and progress: "
                               f"{exc.errors()[0]['msg']}", field="body") from exc
    progress = {**(beat.progress or {}), "stage": beat.stage}
    data = b""
    if beat.log is not None:
        try:
            data = base64.b64decode(beat.log.data, validate=True)
        except binascii.Error as exc:
            raise ValidationFailed("log.data must be the log's bytes in base64", field="log.data") from exc
    size = await heartbeats.record(pool, str(job_id), attempt, progress=progress, log_tail=beat.log_tail,
                                   log_offset=beat.log.offset if beat.log is not None else None, data=data)
    return HeartbeatAnswer(log_offset=size)


@router.put("/{job_id}/{attempt}/checkpoint", status_code=204)
async def put_checkpoint(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep,
                         expires: int = Query(...), sig: str = Query(...)) -> None:
    """A checkpoint, spooled here and checked (one safe ``checkpoint-N/`` folder) before the store keeps it."""
    _check(settings, request, expires, sig)
    folder = settings.home / "spool"
    await anyio.Path(folder).mkdir(parents=True, exist_ok=True, mode=0o700)
    spooled = folder / f"checkpoint-{uuid.uuid4().hex}"
    try:
        await _spool(request, spooled, int(settings.max_artifacts_gb * 2**30))
        await store_checkpoint(settings, str(job_id), spooled)
    finally:
        await anyio.Path(spooled).unlink(missing_ok=True)


@router.get("/{job_id}/{attempt}/checkpoint.tar.gz")
async def get_checkpoint(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep,
                         expires: int = Query(...), sig: str = Query(...)) -> Response:
    _check(settings, request, expires, sig)
    latest = await latest_checkpoint(settings, str(job_id))
    if latest is None:
        raise NotFound(f"no checkpoint of job {job_id} was uploaded")
    return await _from_store(settings, latest)


# A workload's output as a multipart upload to the bucket ---------------------------------------------------------

class UploadStart(BaseModel):
    action: Literal["start"]
    size: int = Field(ge=0, description="The archive's size in bytes.")


class UploadSign(BaseModel):
    action: Literal["sign"]
    upload_id: str = Field(min_length=1, max_length=1024)
    part_numbers: list[Annotated[int, Field(ge=1, le=MAX_PARTS)]] = Field(min_length=1, max_length=SIGN_BATCH)


class UploadedPart(BaseModel):
    part_number: int = Field(ge=1, le=MAX_PARTS)
    etag: str = Field(min_length=1, max_length=256, description="The ETag header the part's PUT answered.")


class UploadComplete(BaseModel):
    action: Literal["complete"]
    upload_id: str = Field(min_length=1, max_length=1024)
    parts: list[UploadedPart] = Field(min_length=1, max_length=MAX_PARTS)


class UploadAbort(BaseModel):
    action: Literal["abort"]
    upload_id: str = Field(min_length=1, max_length=1024)


UploadStep = TypeAdapter(Annotated[UploadStart | UploadSign | UploadComplete | UploadAbort,
                                   Field(discriminator="action")])


class UploadAnswer(BaseModel):
    upload_id: str | None = None
    part_bytes: int | None = Field(default=None, description="Every part but the last is this size (start).")
    urls: dict[int, str] | None = Field(default=None, description="A presigned PUT per part number (sign).")


def _limit(settings) -> int:
    return int(settings.max_artifacts_gb * 2**30)


def _s3_error(exc, field: str) -> TuneFleetError:
    """What the bucket said of an upload step, as the workload should read it."""
    code = exc.response.get("Error", {}).get("Code", "")
    if code == "NoSuchUpload":
        return NotFound("no such upload of this output (it was completed, aborted or never started): start again")
    if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall"):
        return ValidationFailed(f"the bucket refused the parts ({code}): every part but the last must be "
                                f"part_bytes long, and each ETag the one its PUT answered", field=field)
    return ServiceUnavailable(f"the bucket answered {code or 'an error'}; retry")


@router.post("/{job_id}/{attempt}/output-upload", response_model=UploadAnswer, response_model_exclude_none=True)
async def output_upload(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep,
                        expires: int = Query(...), sig: str = Query(...)) -> UploadAnswer:
    """One step of sending the output to the bucket in parts: ``start`` (its size: the answer gives the upload id
    and the part size), ``sign`` (up to 100 part numbers: a presigned PUT each, straight to the bucket),
    ``complete`` (every part's number and ETag) or ``abort`` (of an upload that is gone too). The bytes never pass
    through here."""
    from botocore.exceptions import ClientError

    _check(settings, request, expires, sig)
    body = await _read(request, 1 << 20)
    try:
        step = UploadStep.validate_json(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ValidationFailed(f"an upload step is JSON with action start, sign, complete or abort: {error['msg']}",
                               field=".".join(str(p) for p in error["loc"]) or "body") from exc
    store, key = store_from_settings(settings), output_key(str(job_id), attempt)
    if not store.signs_urls:
        raise Conflict("this server's store takes no parts: PUT the output to TUNEFLEET_ARTIFACTS_URL")
    try:
        if isinstance(step, UploadStart):
            if step.size > _limit(settings):
                raise PayloadTooLarge(f"the output is {step.size / 2**30:.1f} GiB, over this server's "
                                      f"{settings.max_artifacts_gb:g} GiB")
            if await store.exists(key):
                raise Conflict(f"the output of job {job_id} attempt {attempt} was already received")
            upload_id = await asyncio.to_thread(store.start_upload, key)
            return UploadAnswer(upload_id=upload_id, part_bytes=part_bytes(step.size, settings.s3_part_mb * 2**20))
        if isinstance(step, UploadSign):
            return UploadAnswer(urls={n: store.presign_part(key, step.upload_id, n, PART_URL_S)
                                      for n in step.part_numbers})
        if isinstance(step, UploadComplete):
            # what the parts hold, not what the start claimed; and an output in place is never replaced
            sent, limit = await asyncio.to_thread(store.uploaded_bytes, key, step.upload_id), _limit(settings)
            if sent > limit or await store.exists(key):
                await asyncio.to_thread(store.abort_upload, key, step.upload_id)
                if sent > limit:
                    raise PayloadTooLarge(f"the parts hold {sent / 2**30:.1f} GiB, over this server's "
                                          f"{settings.max_artifacts_gb:g} GiB")
                raise Conflict(f"the output of job {job_id} attempt {attempt} was already received")
            await asyncio.to_thread(store.finish_upload, key, step.upload_id,
                                    [(p.part_number, p.etag) for p in step.parts])
        else:
            await asyncio.to_thread(store.abort_upload, key, step.upload_id)
    except ClientError as exc:
        if isinstance(step, UploadAbort) and exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
            return UploadAnswer()  # already gone: what an abort asks for
        raise _s3_error(exc, "parts") from None
    return UploadAnswer()

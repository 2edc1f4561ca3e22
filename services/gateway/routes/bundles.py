"""Where remote workloads fetch their bundle and send back artifacts and log tails. These routes take a
short-lived signed URL instead of an API key: the workload holds no credential of the user's."""

from __future__ import annotations

import asyncio
import tarfile
import tempfile
import uuid

import anyio
from fastapi import APIRouter, Query, Request, Response

from services.cloud.bundles import artifacts_dir, bundle_dir, pack, unpack
from shared.errors import NotFound, PayloadTooLarge, TuneFleetError, ValidationFailed
from shared.signing import verify

from ..deps import SettingsDep

router = APIRouter(prefix="/api/bundles", tags=["bundles"], include_in_schema=False)

MAX_ARTIFACTS_BYTES = 20 * 1024**3
MAX_LOG_BYTES = 64 * 1024


class Forbidden(TuneFleetError):
    code = "forbidden"
    http_status = 403


def _check(settings, request: Request, expires: int, sig: str) -> None:
    if not verify(settings.require_secret_key(), request.method, request.url.path, expires, sig):
        raise Forbidden("the link is invalid or has expired")


@router.get("/{job_id}/{attempt}/bundle.tar.gz")
async def get_bundle(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep,
                     expires: int = Query(...), sig: str = Query(...)) -> Response:
    _check(settings, request, expires, sig)
    folder = bundle_dir(settings, str(job_id), attempt)
    if not await anyio.Path(folder).is_dir():
        raise NotFound(f"no bundle for job {job_id} attempt {attempt}")
    return Response(await asyncio.to_thread(pack, folder), media_type="application/gzip")


@router.put("/{job_id}/{attempt}/artifacts", status_code=204)
async def put_artifacts(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep,
                        expires: int = Query(...), sig: str = Query(...)) -> None:
    _check(settings, request, expires, sig)
    with tempfile.TemporaryFile() as spool:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_ARTIFACTS_BYTES:
                raise PayloadTooLarge("artifacts are over 20 GB")
            await asyncio.to_thread(spool.write, chunk)
        spool.seek(0)
        try:
            await asyncio.to_thread(unpack, spool, artifacts_dir(settings, str(job_id), attempt))
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ValidationFailed(f"artifacts must be a tar.gz archive: {exc}", field="body") from exc


@router.put("/{job_id}/{attempt}/log", status_code=204)
async def put_log(job_id: uuid.UUID, attempt: int, request: Request, settings: SettingsDep,
                  expires: int = Query(...), sig: str = Query(...)) -> None:
    _check(settings, request, expires, sig)
    body = (await request.body())[-MAX_LOG_BYTES:]
    folder = anyio.Path(artifacts_dir(settings, str(job_id), attempt))
    await folder.mkdir(parents=True, exist_ok=True)
    await (folder / "log-tail.txt").write_bytes(body)

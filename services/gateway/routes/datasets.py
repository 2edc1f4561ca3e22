from __future__ import annotations

import asyncio
import os
import uuid

import anyio
from fastapi import APIRouter, UploadFile

from shared.dataformats import DatasetError, validate_file
from shared.errors import DatasetInvalid, PayloadTooLarge

from ..deps import CurrentUser, PoolDep, SettingsDep
from ..schemas import DatasetPublic

router = APIRouter(prefix="/api/training/datasets", tags=["datasets"])

CHUNK = 1024 * 1024


@router.post("", status_code=201, response_model=DatasetPublic)
async def upload_dataset(file: UploadFile, user: CurrentUser, pool: PoolDep, settings: SettingsDep) -> DatasetPublic:
    """Upload a JSONL data set (text, chat ``messages``, ``instruction``/``output`` or
    ``prompt``/``chosen``/``rejected``). Every line is checked; a bad file gets 422 naming its lines."""
    dataset_id = uuid.uuid4()
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    settings.datasets_dir.chmod(0o700)  # uploads are read by the server alone: users' code gets a copy of its own
    path = settings.datasets_dir / f"{dataset_id}.jsonl"
    path.touch(mode=0o600, exist_ok=False)
    limit = settings.max_upload_mb * 1024 * 1024
    size = 0
    try:
        async with await anyio.open_file(path, "wb") as out:
            while chunk := await file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"file is over {settings.max_upload_mb} MB "
                                          "(TUNEFLEET_MAX_UPLOAD_MB raises the limit)", field="file")
                await out.write(chunk)
        summary = await asyncio.to_thread(validate_file, str(path))
    except DatasetError as exc:
        os.unlink(path)
        raise DatasetInvalid(f"{file.filename}: {exc}", field="file",
                             details={"errors": [{"line": n, "problem": p} for n, p in exc.errors]}) from exc
    except UnicodeDecodeError as exc:
        os.unlink(path)
        raise DatasetInvalid(f"{file.filename}: not UTF-8 text at byte {exc.start}", field="file") from exc
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    await pool.execute(
        """INSERT INTO datasets (id, user_id, filename, path, format, rows, stats)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        dataset_id, user, file.filename or "data.jsonl", str(path), summary.format.value, summary.rows,
        summary.stats)
    return DatasetPublic(id=str(dataset_id), filename=file.filename or "data.jsonl", format=summary.format.value,
                         rows=summary.rows, stats=summary.stats)

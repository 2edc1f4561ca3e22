from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import anyio
import orjson
from fastapi import APIRouter, Query, UploadFile

from shared.dataformats import DatasetError, first_rows, validate_file
from shared.errors import DatasetInvalid, NotFound, PayloadTooLarge
from shared.storage import StorageError, key_of, ref

from .. import repository
from ..deps import CurrentUser, PoolDep, SettingsDep, StoreDep
from ..schemas import DatasetPreview, DatasetPublic, DatasetsPage

router = APIRouter(prefix="/api/training/datasets", tags=["datasets"])

CHUNK = 1024 * 1024
#: What a preview reads of a stored data set at most: its first rows are near the start.
PREVIEW_BYTES = 4 * 1024 * 1024


async def read_first_rows(store, path: str, limit: int) -> list[dict]:
    """The first ``limit`` rows of a data set, from the object store (a ranged read) or a file of this machine."""
    key = key_of(path)
    if key is None:
        return await asyncio.to_thread(first_rows, path, limit)
    head = await store.get_head(key, PREVIEW_BYTES)
    lines = head.split(b"\n")
    if len(head) == PREVIEW_BYTES:
        lines = lines[:-1]  # a line cut by the read
    return [orjson.loads(line) for line in lines if line.strip()][:limit]


@router.post("", status_code=201, response_model=DatasetPublic)
async def upload_dataset(file: UploadFile, user: CurrentUser, pool: PoolDep, settings: SettingsDep,
                         store: StoreDep) -> DatasetPublic:
    """Upload a JSONL data set (text, chat ``messages``, ``instruction``/``output`` or
    ``prompt``/``chosen``/``rejected``). Every line is checked; a bad file gets 422 naming its lines. ``stats`` has
    the character lengths of the rows and ``token_lengths``, a histogram of their approximate token lengths
    (characters / 4: no tokenizer is at hand before a model is chosen)."""
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
    # kept in the object store (a folder of this machine by default, or a bucket every replica reads); the
    # upload's own file was only where it was checked
    key = f"datasets/{dataset_id}.jsonl"
    try:
        await store.put_file(key, path)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    created_at = await repository.insert_dataset(pool, dataset_id, user, file.filename or "data.jsonl", ref(key),
                                                 summary.format.value, summary.rows, summary.stats)
    return DatasetPublic(id=str(dataset_id), filename=file.filename or "data.jsonl", format=summary.format.value,
                         rows=summary.rows, stats=summary.stats, created_at=created_at)


def _public(row) -> DatasetPublic:
    return DatasetPublic(id=str(row["id"]), filename=row["filename"], format=row["format"], rows=row["rows"],
                         stats=row["stats"], created_at=row["created_at"])


@router.get("", response_model=DatasetsPage)
async def list_datasets(user: CurrentUser, pool: PoolDep, limit: int = Query(50, ge=1, le=500),
                        offset: int = Query(0, ge=0, le=1_000_000_000)) -> DatasetsPage:
    """Your data sets with their statistics, newest first."""
    total, rows = await repository.datasets(pool, user, limit, offset)
    return DatasetsPage(total_count=total, limit=limit, offset=offset, datasets=[_public(r) for r in rows])


@router.get("/{dataset_id}", response_model=DatasetPublic)
async def get_dataset(dataset_id: uuid.UUID, user: CurrentUser, pool: PoolDep) -> DatasetPublic:
    row = await repository.dataset(pool, user, str(dataset_id))
    if row is None:
        raise NotFound(f"data set {dataset_id} not found")
    return _public(row)


@router.get("/{dataset_id}/preview", response_model=DatasetPreview)
async def preview_dataset(dataset_id: uuid.UUID, user: CurrentUser, pool: PoolDep, store: StoreDep,
                          limit: int = Query(5, ge=1, le=50, description="How many rows, 1 to 50.")) -> DatasetPreview:
    """The data set's first ``limit`` rows, as uploaded: what a front end shows before it is trained on."""
    row = await repository.dataset(pool, user, str(dataset_id))
    if row is None:
        raise NotFound(f"data set {dataset_id} not found; GET /api/training/datasets lists yours", field="dataset_id")
    try:
        rows = await read_first_rows(store, row["path"], limit)
    except (FileNotFoundError, StorageError) as exc:
        raise NotFound(f"the file of data set {dataset_id} is no longer on the server; upload it again",
                       field="dataset_id") from exc
    return DatasetPreview(dataset_id=str(dataset_id), format=row["format"], rows=rows)


@router.delete("/{dataset_id}", status_code=204)
async def delete_dataset(dataset_id: uuid.UUID, user: CurrentUser, pool: PoolDep, store: StoreDep) -> None:
    """Delete a data set and its file; refused (409) while an unfinished job trains on it."""
    async with pool.acquire() as conn, conn.transaction():
        await repository.lock_for_use(conn, "dataset", str(dataset_id))
        row = await repository.dataset(conn, user, str(dataset_id))
        if row is None:
            raise NotFound(f"data set {dataset_id} not found")
        await repository.refuse_while_used(conn, user, f"data set {dataset_id}", "deleted", dataset_path=row["path"])
        path = await repository.delete_dataset(conn, user, dataset_id)
    if path and (key := key_of(path)) is not None:
        await store.delete_prefix(key)
    elif path:
        await asyncio.to_thread(Path(path).unlink, missing_ok=True)

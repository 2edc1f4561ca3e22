"""A model's exports (the merged model, a GGUF file), made by whichever gateway replica is asked and then kept where
every replica finds them: their state in PostgreSQL (``model_exports``), their file in the object store
(``exports/<model>/merged.tar`` or ``exports/<model>/gguf-<q>.gguf``).

The replica that takes ``POST /api/models/{id}/export`` claims the row, runs the export as a child process in a
folder of its own disk (``TUNEFLEET_HOME/exports/…``), renews the row's heartbeat while it runs, puts the result in
the store and marks the row done, then removes the folder. A row still running whose heartbeat is over a minute old
was left by a replica that stopped: it reads as failed, and the next POST makes the export anew (a new ``run_id``,
so a late word from the old run changes nothing)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Literal

import asyncpg
from pydantic import BaseModel, Field

from shared.settings import Settings
from shared.storage import LocalStore, Store

log = logging.getLogger(__name__)

#: How often a running export's replica renews its row, and how old a heartbeat may be before the row is taken as
#: abandoned.
HEARTBEAT_S = 10.0
STALE_S = 60.0

ABANDONED = "the gateway making it stopped before it finished; POST /api/models/{id}/export again to make it anew"


class ExportPublic(BaseModel):
    """An export and its state, as every replica reads it."""

    key: str = Field(description="merged, or gguf-<f32|f16|q8_0>: GET /api/models/{id}/download?export=KEY.")
    format: str
    quantize: str | None
    status: Literal["running", "done", "failed"]
    error: str | None = None
    size_bytes: int | None = Field(default=None, description="The file's size, once done.")


def export_key(format_: str, quantize: str | None) -> str:
    """The export's name: ``merged``, or ``gguf-<f32|f16|q8_0>``."""
    return "merged" if format_ == "merged" else f"gguf-{quantize or 'f32'}"


def store_key(model_id: uuid.UUID | str, key: str) -> str:
    return f"exports/{model_id}/{key}.tar" if key == "merged" else f"exports/{model_id}/{key}.gguf"


_STATE = f"""SELECT key, format, quantize, error, size_bytes,
                    CASE WHEN status = 'running' AND heartbeat_at < now() - interval '{STALE_S:.0f} seconds'
                         THEN 'failed' ELSE status END AS status,
                    status = 'running' AND heartbeat_at < now() - interval '{STALE_S:.0f} seconds' AS abandoned
             FROM model_exports"""


def _state(row: asyncpg.Record) -> ExportPublic:
    quantize = row["quantize"] if row["quantize"] != "f32" else None
    return ExportPublic(key=row["key"], format=row["format"], quantize=quantize, status=row["status"],
                        error=ABANDONED if row["abandoned"] else row["error"], size_bytes=row["size_bytes"])


class Exports:
    """The exports this replica runs, and the reads every replica makes."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, store: Store):
        self.pool, self.settings, self.store = pool, settings, store
        self.tasks: set[asyncio.Task] = set()

    async def get(self, model_id: uuid.UUID, key: str) -> ExportPublic | None:
        row = await self.pool.fetchrow(f"{_STATE} WHERE model_id = $1 AND key = $2", model_id, key)
        return None if row is None else _state(row)

    async def list(self, model_id: uuid.UUID) -> list[ExportPublic]:
        return [_state(r) for r in await self.pool.fetch(f"{_STATE} WHERE model_id = $1 ORDER BY key", model_id)]

    async def start(self, model_id: uuid.UUID, base_model: str, adapter_path: str, format_: str,
                    quantize: str | None, name: str) -> ExportPublic:
        """Claim the export and start it here, unless it is done or running on some replica (then say so).
        ``name`` is the folder a merged export's tar holds."""
        key, run_id = export_key(format_, quantize), uuid.uuid4().hex
        claimed = await self.pool.fetchval(
            f"""INSERT INTO model_exports (model_id, key, format, quantize, status, run_id)
                VALUES ($1, $2, $3, $4, 'running', $5)
                ON CONFLICT (model_id, key) DO UPDATE
                    SET status = 'running', error = NULL, size_bytes = NULL, run_id = EXCLUDED.run_id,
                        started_at = now(), heartbeat_at = now(), finished_at = NULL
                    WHERE model_exports.status = 'failed'
                       OR (model_exports.status = 'running'
                           AND model_exports.heartbeat_at < now() - interval '{STALE_S:.0f} seconds')
                RETURNING run_id""", model_id, key, format_, quantize, run_id)
        if claimed != run_id:
            return await self.get(model_id, key)
        work = self.settings.home / "exports" / str(model_id) / f"{key}-{run_id}"
        try:
            process = await self._spawn(work, base_model, adapter_path, format_, quantize)
        except OSError as exc:
            await self._finish(model_id, key, run_id, "failed", f"the export could not start: {exc}")
            await asyncio.to_thread(_remove, work)
            return await self.get(model_id, key)
        task = asyncio.create_task(self._follow(model_id, key, run_id, process, work, name), name=f"export-{key}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return ExportPublic(key=key, format=format_, quantize=quantize if quantize != "f32" else None,
                            status="running")

    async def _spawn(self, work: Path, base_model: str, adapter_path: str, format_: str,
                     quantize: str | None) -> asyncio.subprocess.Process:
        await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "services.model_registry.serving.export", "--base", base_model,
                "--adapter", adapter_path, "--out", str(work), "--format", format_]
        if quantize:
            argv += ["--quantize", quantize]
        output = await asyncio.to_thread(open, work / "export.log", "ab")
        with output:  # the server's own settings (its keys among them) stay out of the export's environment
            return await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, env={k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET")})

    async def _follow(self, model_id: uuid.UUID, key: str, run_id: str, process: asyncio.subprocess.Process,
                      work: Path, name: str) -> None:
        try:
            while True:
                try:
                    code = await asyncio.wait_for(process.wait(), HEARTBEAT_S)
                    break
                except TimeoutError:
                    await self._renew(model_id, key, run_id)
            status, error, size = await self._keep(model_id, key, work, code, name)
            await self._finish(model_id, key, run_id, status, error, size)
        except asyncio.CancelledError:  # this gateway stops: so does its export, and its row says why
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.shield(process.wait())
            with contextlib.suppress(Exception):
                await asyncio.shield(self._finish(model_id, key, run_id, "failed", ABANDONED))
            raise
        except Exception as exc:  # the store or the database failed: the row must not stay running
            log.exception("export %s of model %s failed", key, model_id)
            with contextlib.suppress(Exception):
                await self._finish(model_id, key, run_id, "failed", f"keeping the export failed: {exc}")
        finally:
            await asyncio.to_thread(_remove, work)

    async def _keep(self, model_id: uuid.UUID, key: str, work: Path, code: int,
                    name: str) -> tuple[str, str | None, int | None]:
        """Put a finished export in the store: (status, error, size in bytes)."""
        try:
            record = json.loads(await asyncio.to_thread((work / "export.json").read_text))
        except (OSError, ValueError):
            record = {}
        if record.get("status") != "done":
            error = record.get("error") or (f"the export process ended with code {code}: "
                                            f"{await asyncio.to_thread(_tail, work / 'export.log')}")
            return "failed", error, None
        path = Path(record["path"])
        if key == "merged":
            path = await asyncio.to_thread(tar_folder, path, work / "merged.tar", name)
        await self.store.put_file(store_key(model_id, key), path)
        return "done", None, path.stat().st_size

    async def _renew(self, model_id: uuid.UUID, key: str, run_id: str) -> None:
        """Renew the row's heartbeat; a database away for a moment stops nothing (the export goes on, and the
        next renewal catches up unless the row has gone stale meanwhile)."""
        try:
            await self.pool.execute("UPDATE model_exports SET heartbeat_at = now() "
                                    "WHERE model_id = $1 AND key = $2 AND run_id = $3", model_id, key, run_id)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("export %s of model %s: renewing its heartbeat failed: %s", key, model_id, exc)

    async def _finish(self, model_id: uuid.UUID, key: str, run_id: str, status: str, error: str | None,
                      size: int | None = None) -> None:
        await self.pool.execute(
            """UPDATE model_exports SET status = $4, error = $5, size_bytes = $6, finished_at = now(),
                                        heartbeat_at = now()
               WHERE model_id = $1 AND key = $2 AND run_id = $3""", model_id, key, run_id, status, error, size)

    async def sweep(self) -> None:
        """At start: remove the folders of runs that no replica runs any more (their gateway stopped midway)."""
        root = self.settings.home / "exports"
        folders = await asyncio.to_thread(lambda: [p for p in root.glob("*/*") if p.is_dir()])
        if not folders:
            return
        live = {r["run_id"] for r in await self.pool.fetch(
            f"SELECT run_id FROM model_exports WHERE status = 'running' "
            f"AND heartbeat_at >= now() - interval '{STALE_S:.0f} seconds'")}
        for folder in folders:
            if folder.name.rpartition("-")[2] not in live:
                await asyncio.to_thread(_remove, folder)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _remove(work: Path) -> None:
    """A run's folder, and its model's folder once no run is left in it."""
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.parent.rmdir()


def tar_folder(folder: Path, path: Path, arcname: str) -> Path:
    """``folder`` as an uncompressed tar at ``path``, under ``arcname``; links are left out."""
    with tarfile.open(path, "w") as tar:
        tar.add(folder, arcname=arcname, filter=lambda info: None if info.issym() or info.islnk() else info)
    return path


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:]) or "no output"


async def download_path(store: Store, key: str) -> tuple[Path, bool]:
    """A local file with the stored export: (path, whether it is a temporary copy to delete after sending)."""
    if isinstance(store, LocalStore):
        return store.local_path(key), False
    fd, name = tempfile.mkstemp(suffix=Path(key).suffix)
    os.close(fd)
    try:
        await store.get_file(key, name)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name), True

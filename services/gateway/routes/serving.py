"""Serving registered models: ``POST /api/training/deploy`` (the specification's body), ``/api/servings``, and the
download of a model's files. The model registry starts the engines; the gateway checks the request, stores it and
sends the command through its outbox, so an accepted serving is not lost when NATS is away."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from services.cloud.output import local_output
from services.model_registry.serving.checks import check_adapter
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.events import ServeRequested, ServeStopRequested
from shared.outbox import Outbox
from shared.settings import Settings
from shared.storage import StorageError

from .. import views
from ..deploying import OUTBOX
from ..deps import BusDep, CurrentUser, ExportsDep, PoolDep, SettingsDep
from ..exports import ExportPublic, Exports, download_path, store_key, tar_folder
from ..schemas import ServingDeployRequest, ServingPublic

router = APIRouter(tags=["serving"])

#: How long DELETE waits for the registry to report the serving stopped before it answers.
STOP_WAIT_S = 30.0


async def _model_for(pool, user: str, body: ServingDeployRequest):
    if body.model_id is not None:
        row = await views.model(pool, user, body.model_id)
        if row is None:
            raise NotFound(f"model {body.model_id} not found; GET /api/models lists yours", field="model_id")
        return row
    row = await pool.fetchrow("SELECT * FROM models WHERE job_id = $1 AND user_id = $2", body.job_id, user)
    if row is None:
        await views.ensure_job_visible(pool, user, str(body.job_id))
        raise Conflict(f"job {body.job_id} has no registered model: a job's model is registered when it completes "
                       "(GET /api/training/jobs/ID says its status)", field="job_id")
    return row


async def _here(settings: Settings, model) -> dict:
    """The model's row with its output on this machine: brought from the store the first time when it was
    trained by a provider on another machine (``local_output``)."""
    model = dict(model)
    if model["adapter_path"]:
        model["adapter_path"] = str(await asyncio.to_thread(local_output, settings, model["adapter_path"]))
    return model


def _checkpoint(model, checkpoint_path: str) -> Path:
    """A checkpoint folder of the model's job: relative to the job's output folder, or a path inside it."""
    if not model["adapter_path"]:
        raise ValidationFailed("this model has no output folder to take a checkpoint from", field="checkpoint_path")
    output = Path(model["adapter_path"]).parent.resolve()
    path = Path(checkpoint_path)
    path = (path if path.is_absolute() else output / path).resolve()
    if not path.is_relative_to(output / "checkpoints"):
        raise ValidationFailed(f"checkpoint_path {checkpoint_path!r} is not a checkpoint of job {model['job_id']}: "
                               "give one that GET /api/training/jobs/ID/checkpoints lists, e.g. "
                               "checkpoints/checkpoint-20", field="checkpoint_path")
    if not (path / "adapter_config.json").is_file():
        raise ValidationFailed(f"checkpoint_path {checkpoint_path!r} holds no adapter (adapter_config.json); give one "
                               "that GET /api/training/jobs/ID/checkpoints lists", field="checkpoint_path")
    return path


def _check(adapter: str, base_model: str, body: ServingDeployRequest):
    base = Path(base_model)
    return check_adapter(Path(adapter), base if base.is_dir() else None, body.server_type)


@router.post("/api/training/deploy", response_model=ServingPublic, status_code=202)
async def deploy_serving(body: ServingDeployRequest, user: CurrentUser, pool: PoolDep, bus: BusDep,
                         settings: SettingsDep) -> ServingPublic:
    """Serve a registered model on vLLM, Ollama or the built-in server. The serving is ``starting`` until its engine
    answers a smoke prompt (``ready``), or ``failed`` with the reason. Call it at ``base_url`` with your API key."""
    model = await _here(settings, await _model_for(pool, user, body))
    name = body.name or model["name"]
    lora = model["lora_r"] is not None
    adapter = str(_checkpoint(model, body.checkpoint_path)) if body.checkpoint_path else (
        model["adapter_path"] if lora else None)
    if adapter is None and not model["adapter_path"]:
        raise Conflict(f"model {model['id']} has no files to serve (its job left none)", field="model_id")
    findings = []
    if adapter is not None:
        findings = await asyncio.to_thread(_check, adapter, model["base_model"], body)
        errors = [f for f in findings if f.level == "error"]
        if errors:
            raise ValidationFailed(f"this adapter cannot be served on {body.server_type.value}: "
                                   + "; ".join(f"{f.field}: {f.message}" for f in errors), field=errors[0].field)
    if await views.serving_by_name(pool, user, name) is not None:
        raise Conflict(f"you already serve a model named {name!r}: stop it (DELETE /api/servings/ID) or give another "
                       "name", field="name")
    serving_id = str(uuid.uuid4())
    cmd = ServeRequested(job_id=str(model["job_id"]), serving_id=serving_id, user_id=user, model_id=str(model["id"]),
                         name=name, server_type=body.server_type, adapter_path=adapter,
                         model_path=None if lora else model["adapter_path"], base_model=model["base_model"],
                         options=body.config)
    outbox = Outbox(pool, OUTBOX)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('serving-name:' || $1 || ':' || $2))", user, name)
        if await views.serving_by_name(conn, user, name) is not None:
            raise Conflict(f"you already serve a model named {name!r}", field="name")
        await conn.execute(
            """INSERT INTO serving_requests (id, user_id, model_id, name, server_type, findings)
               VALUES ($1, $2, $3, $4, $5, $6)""", serving_id, user, model["id"], name, body.server_type.value,
            [f.model_dump() for f in findings])
        await outbox.put(conn, cmd)
    await outbox.send(bus.publish, cmd)
    return ServingPublic.from_row(await views.serving(pool, user, uuid.UUID(serving_id)), settings.public_url)


@router.get("/api/servings", response_model=list[ServingPublic])
async def list_servings(user: CurrentUser, pool: PoolDep, settings: SettingsDep,
                        state: str | None = Query(None, pattern="^(starting|ready|failed|stopped)$")
                        ) -> list[ServingPublic]:
    rows = await views.servings(pool, user)
    return [ServingPublic.from_row(r, settings.public_url) for r in rows if state is None or r["state"] == state]


async def _serving(pool, user: str, serving_id: uuid.UUID):
    row = await views.serving(pool, user, serving_id)
    if row is None:
        raise NotFound(f"serving {serving_id} not found; GET /api/servings lists yours", field="serving_id")
    return row


@router.get("/api/servings/{serving_id}", response_model=ServingPublic)
async def get_serving(serving_id: uuid.UUID, user: CurrentUser, pool: PoolDep,
                      settings: SettingsDep) -> ServingPublic:
    return ServingPublic.from_row(await _serving(pool, user, serving_id), settings.public_url)


@router.delete("/api/servings/{serving_id}", response_model=ServingPublic)
async def stop_serving(serving_id: uuid.UUID, user: CurrentUser, pool: PoolDep, bus: BusDep,
                       settings: SettingsDep) -> ServingPublic:
    """Stop a serving: its engine process ends (or its adapter is unloaded from a shared vLLM, or its Ollama model
    deleted). Answers once the registry reports it ``stopped``, or after 30 s with the state it has then."""
    row = await _serving(pool, user, serving_id)
    if row["state"] in ("starting", "ready"):
        stop, outbox = ServeStopRequested(job_id=str(serving_id), serving_id=str(serving_id), user_id=user), \
            Outbox(pool, OUTBOX)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE serving_requests SET stop_requested_at = coalesce(stop_requested_at, now()) "
                               "WHERE id = $1", serving_id)
            await outbox.put(conn, stop)
        await outbox.send(bus.publish, stop)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_WAIT_S
        while loop.time() < deadline and row["state"] in ("starting", "ready"):
            await asyncio.sleep(0.5)
            row = await _serving(pool, user, serving_id)
    return ServingPublic.from_row(row, settings.public_url)


def _tar(folder: Path, arcname: str) -> str:
    fd, path = tempfile.mkstemp(suffix=".tar")
    os.close(fd)
    return str(tar_folder(folder, Path(path), arcname))


@router.get("/api/models/{model_id}/download", response_class=FileResponse)
async def download_model(model_id: uuid.UUID, user: CurrentUser, pool: PoolDep, settings: SettingsDep,
                         exports: ExportsDep,
                         merged: bool = Query(False, description="The base with the adapter merged in (jobs "
                                                                 "trained with training.merge_adapter)."),
                         checkpoint: str | None = Query(None, description="One of the job's checkpoints instead, "
                                                                          "e.g. checkpoints/checkpoint-20."),
                         export: str | None = Query(None, pattern=r"^(merged|gguf-(f32|f16|q8_0))$",
                                                    description="A finished export (POST /api/models/{id}/export): "
                                                                "merged or gguf-<f32|f16|q8_0>.")):
    """The model's files as a tar: the adapter (with its tokenizer), the merged model, a checkpoint or an export
    (a GGUF export is the file itself)."""
    if export:  # from the store: the model's own files need not be on this machine
        model = await views.model(pool, user, model_id)
        if model is None:
            raise NotFound(f"model {model_id} not found; GET /api/models lists yours", field="model_id")
        return await _export_file(exports, model, export)
    model = await _model_with_adapter(pool, user, model_id, settings)
    folder = Path(model["adapter_path"])
    if checkpoint:
        folder = _checkpoint(model, checkpoint)
    elif merged:
        folder = folder.parent / "merged"
        if not (folder / "config.json").is_file():
            raise Conflict("this model has no merged copy: train with training.merge_adapter=true, or download the "
                           "adapter (merged=false)", field="merged")
    if not folder.is_dir():
        raise NotFound(f"the files of model {model_id} are no longer on this server", field="model_id")
    name = f"{model['name']}-v{model['version']}-{folder.name}"
    path = await asyncio.to_thread(_tar, folder, name)
    return FileResponse(path, media_type="application/x-tar", filename=f"{name}.tar",
                        background=BackgroundTask(os.unlink, path))


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["merged", "gguf"] = Field(description="merged: the base with the adapter merged in (safetensors, "
                                              "for any engine); gguf: that model as one GGUF file (llama.cpp, Ollama).")
    quantize: Literal["f16", "q8_0"] | None = Field(default=None, description="gguf only: f16 or q8_0 weights "
                                                    "(default f32).")


async def _model_with_adapter(pool, user: str, model_id: uuid.UUID, settings: Settings):
    model = await views.model(pool, user, model_id)
    if model is None or not model["adapter_path"]:
        raise NotFound(f"model {model_id} not found, or its job left no files; GET /api/models lists yours",
                       field="model_id")
    return await _here(settings, model)


async def _export_file(exports: Exports, model, key: str) -> FileResponse:
    state = await exports.get(model["id"], key)
    if state is None or state.status != "done":
        said = "not made" if state is None else state.status + (f": {state.error}" if state.error else "")
        raise Conflict(f"export {key} of this model is {said}; POST /api/models/{{id}}/export makes it and GET "
                       "/api/models/{id}/exports says when it is done", field="export")
    try:
        path, temporary = await download_path(exports.store, store_key(model["id"], key))
    except StorageError as exc:
        raise NotFound(f"the file of export {key} is no longer in the store ({exc}); POST /api/models/{{id}}/export "
                       "makes it again", field="export") from exc
    if not path.is_file():
        raise NotFound(f"the file of export {key} is no longer in the store; POST /api/models/{{id}}/export makes it "
                       "again", field="export")
    name = f"{model['name']}-v{model['version']}"
    filename, media = (f"{name}-merged.tar", "application/x-tar") if key == "merged" else (
        f"{name}-{key}.gguf", "application/octet-stream")
    return FileResponse(path, media_type=media, filename=filename,
                        background=BackgroundTask(os.unlink, path) if temporary else None)


@router.post("/api/models/{model_id}/export", response_model=ExportPublic, status_code=202)
async def export_model(model_id: uuid.UUID, body: ExportRequest, user: CurrentUser, pool: PoolDep,
                       settings: SettingsDep, exports: ExportsDep) -> ExportPublic:
    """Make files the model can be taken to any engine with: the merged model, or a GGUF file. Runs in the
    background on the gateway that takes the request; GET /api/models/{id}/exports (on any gateway) says when it
    is done, and the download gives it from the object store."""
    model = await _model_with_adapter(pool, user, model_id, settings)
    if model["lora_r"] is None:
        raise Conflict("this model is a full fine-tune: it is already a whole model; download it as it is",
                       field="format")
    if body.format == "merged" and body.quantize:
        raise ValidationFailed("quantize applies to format 'gguf' only", field="quantize")
    return await exports.start(model_id, model["base_model"], model["adapter_path"], body.format, body.quantize,
                               name=f"{model['name']}-v{model['version']}-merged")


@router.get("/api/models/{model_id}/exports", response_model=list[ExportPublic])
async def list_exports(model_id: uuid.UUID, user: CurrentUser, pool: PoolDep,
                       exports: ExportsDep) -> list[ExportPublic]:
    """The model's exports and their state: running, done (with its size) or failed (with why)."""
    if await views.model(pool, user, model_id) is None:
        raise NotFound(f"model {model_id} not found; GET /api/models lists yours", field="model_id")
    return await exports.list(model_id)

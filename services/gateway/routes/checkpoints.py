"""``GET /api/training/jobs/{job_id}/checkpoints``: the checkpoints a job's output holds, to serve or resume from.

A registered model's output folder is the parent of its ``adapter_path``; before the model is registered it is
the newest ``{home}/artifacts/<job>/attempt-N`` folder that holds a checkpoint (``services.cloud.bundles``). Each
``checkpoints/checkpoint-N`` folder with a ``trainer_state.json`` is listed; ``name`` is relative to the output
folder, as ``POST /api/training/deploy`` takes it in ``checkpoint_path``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.cloud.bundles import artifacts_dir
from services.cloud.output import local_output
from shared.settings import Settings

from .. import views
from ..deps import CurrentUser, PoolDep, SettingsDep

router = APIRouter(prefix="/api/training/jobs", tags=["jobs"])

CHECKPOINTS_DIR = "checkpoints"  # trainer.artifacts.CHECKPOINTS_DIR (the gateway does not import the trainer)
TRAINER_STATE = "trainer_state.json"
#: A trainer state larger than this is not parsed (its losses are then unknown): the trainer wrote the file.
MAX_STATE_BYTES = 32 * 2**20


class CheckpointPublic(BaseModel):
    name: str = Field(description="Relative to the job's output folder, e.g. checkpoints/checkpoint-6.")
    step: int
    loss: float | None = Field(description="The last training loss logged at or before the checkpoint's step.")
    eval_loss: float | None = Field(description="The eval loss logged at the checkpoint's step, if it was evaluated.")
    path: str
    created_at: datetime = Field(description="When the checkpoint's trainer state was written.")


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointPublic])
async def list_checkpoints(job_id: uuid.UUID, user: CurrentUser, pool: PoolDep,
                           settings: SettingsDep) -> list[CheckpointPublic]:
    """The job's checkpoints on this server, by step; empty while it has none (yet, or any more)."""
    await views.ensure_job_visible(pool, user, str(job_id))
    adapter_path = await pool.fetchval("SELECT adapter_path FROM models WHERE job_id = $1 AND user_id = $2",
                                       job_id, user)
    if adapter_path:  # brought from the store the first time, when a provider on another machine trained it
        output = (await asyncio.to_thread(local_output, settings, adapter_path)).parent
    else:
        output = await asyncio.to_thread(_newest_attempt_with_checkpoints, settings, str(job_id))
    if output is None:
        return []
    return await asyncio.to_thread(read_checkpoints, output)


def _newest_attempt_with_checkpoints(settings: Settings, job_id: str) -> Path | None:
    """The highest ``attempt-N`` output holding a checkpoint: a retry that has not saved one yet hides nothing."""
    try:
        names = os.listdir(settings.home / "artifacts" / job_id)
    except (FileNotFoundError, NotADirectoryError):
        return None
    attempts = sorted((int(n.removeprefix("attempt-")) for n in names
                       if n.startswith("attempt-") and n.removeprefix("attempt-").isdigit()), reverse=True)
    for attempt in attempts:
        folder = artifacts_dir(settings, job_id, attempt)
        if _checkpoint_folders(folder):
            return folder
    return None


def _checkpoint_folders(output: Path) -> dict[int, Path]:
    """``checkpoint-N`` folders (no links: the trainer wrote them) that hold a trainer state, by N."""
    folder = output / CHECKPOINTS_DIR
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found = {}
    for name in names:
        step, path = name.removeprefix("checkpoint-"), folder / name
        state = path / TRAINER_STATE
        if (name.startswith("checkpoint-") and step.isdigit() and not path.is_symlink() and path.is_dir()
                and not state.is_symlink() and state.is_file()):
            found[int(step)] = path
    return found


def read_checkpoints(output: Path) -> list[CheckpointPublic]:
    listed = []
    for step, path in sorted(_checkpoint_folders(output).items()):
        state = path / TRAINER_STATE
        try:
            written = datetime.fromtimestamp(state.stat().st_mtime, UTC)
        except FileNotFoundError:  # deleted since it was listed (checkpoint retention)
            continue
        loss, eval_loss = _losses(_log_history(state), step)
        listed.append(CheckpointPublic(name=f"{CHECKPOINTS_DIR}/{path.name}", step=step, loss=loss,
                                       eval_loss=eval_loss, path=str(path), created_at=written))
    return listed


def _log_history(state: Path) -> list[dict]:
    try:
        if state.stat().st_size > MAX_STATE_BYTES:
            return []
        history = json.loads(state.read_text(encoding="utf-8")).get("log_history")
    except (OSError, ValueError, AttributeError):
        return []
    return [e for e in history if isinstance(e, dict)] if isinstance(history, list) else []


def _losses(history: list[dict], step: int) -> tuple[float | None, float | None]:
    """(last training loss at or before ``step``, eval loss at ``step``); non-finite values count as unknown."""
    loss = eval_loss = None
    for entry in history:
        at = entry.get("step")
        if not isinstance(at, int) or at > step:
            continue
        if _finite(entry.get("loss")) is not None:
            loss = _finite(entry["loss"])
        if at == step and _finite(entry.get("eval_loss")) is not None:
            eval_loss = _finite(entry["eval_loss"])
    return loss, eval_loss


def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)

"""What a user's configuration may ask of this server, checked before it is stored, preflighted or deployed.

A configuration runs on the server's CPU (preflight) and host (local jobs), so it may not:

* run a model's own Python code (``model.trust_remote_code``) unless the operator allows it;
* load a model from a local path outside the operator's model folders, the data folder's ``models/``, and the
  user's own registered models (``model.base_model``, ``training.rlhf.reward_model``);
* read training data from a path outside the operator's data folders (``data.train_path``): uploaded data sets
  are the way in;
* name an environment variable of the server as the judge's key (``training.rlhf.judge_api_key_env``): the key is
  a secret the user stores (``PUT /api/secrets/judge``) and names with ``judge_api_key_secret``;
* have a local job call a judge at a private, loopback or link-local address (``check_local_job``).

Paths are compared after resolving symlinks and ``..``, so a link inside an allowed folder that points out of it
is refused too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import asyncpg

from shared.config import Method, TrainingConfig
from shared.errors import ValidationFailed
from shared.netpolicy import BlockedAddress, public_address
from shared.settings import Settings

from . import repository, views

#: A Hugging Face hub id: ``name`` or ``owner/name``.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def is_inside(path: Path, folders: list[Path]) -> bool:
    """Whether ``path``, resolved, is one of ``folders`` (resolved) or below one."""
    real = Path(os.path.realpath(path))
    for folder in folders:
        root = Path(os.path.realpath(folder))
        if real == root or root in real.parents:
            return True
    return False


def _is_local_path(reference: str) -> bool:
    return reference.startswith(("/", "~", ".")) or "\\" in reference or ".." in reference


def _adapter_base(path: Path) -> str | None:
    """The base model a PEFT adapter folder names (transformers loads it from ``adapter_config.json`` when the
    folder has no ``config.json`` of its own), or None when ``path`` is no such folder."""
    if not (path / "adapter_config.json").is_file() or (path / "config.json").exists():
        return None
    try:
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return base if isinstance(base, str) and base else None


#: Folders only a provider's machine has (a Kaggle kernel's attached sources). A saved configuration may name a
#: model there; a deploy accepts it only where that provider attaches the source (``kaggle_limits.attached``).
PLATFORM_FOLDERS = ("/kaggle/input",)


def attached_to(reference: str, attached: tuple[str, ...]) -> bool:
    """Whether ``reference`` lies in a folder the workload's platform attaches (a Kaggle kernel's
    ``/kaggle/input/<source>``): a path on that machine, which this server never reads."""
    path = PurePosixPath(reference)
    return ".." not in path.parts and any(path.is_relative_to(folder) for folder in attached)


async def _check_model_reference(settings: Settings, pool: asyncpg.Pool, user_id: str, reference: str,
                                 field: str, depth: int = 0, attached: tuple[str, ...] = ()) -> None:
    """Also the base model an allowed adapter folder names: a user may have rewritten their own adapter's
    ``adapter_config.json`` (it came back from their machine) to point at any path. A path in one of the
    ``attached`` folders is the workload machine's, not this server's."""
    if attached_to(reference, attached):
        return
    if depth > 2:
        raise ValidationFailed(f"{field}: adapters name adapters too deep; name the base model itself", field=field)
    if not _is_local_path(reference):
        if HUB_ID.match(reference):
            return
        raise ValidationFailed(f"{field} {reference!r} is neither a hub id (owner/name) nor an absolute path",
                               field=field)
    if not os.path.isabs(reference):
        raise ValidationFailed(f"{field} {reference!r}: give a local model as an absolute path", field=field)
    registered = [Path(p) for p in await views.adapter_paths(pool, user_id)]
    if await asyncio.to_thread(is_inside, Path(reference), [settings.models_dir, *settings.model_dirs, *registered]):
        base = await asyncio.to_thread(_adapter_base, Path(reference))
        if base is not None:
            await _check_model_reference(settings, pool, user_id, base, field, depth + 1)
        return
    raise ValidationFailed(
        f"{field} {reference!r} is not in a model folder this server allows: use a hub id, one of your registered "
        f"models, or a path under {settings.models_dir} or a folder the operator lists in TUNEFLEET_MODEL_DIRS",
        field=field)


def check_train_path(settings: Settings, reference: str) -> Path:
    """The path of ``data.train_path`` when the operator allows it; refused otherwise."""
    path = Path(reference)
    if not path.is_absolute() or not is_inside(path, settings.data_dirs):
        raise ValidationFailed(
            f"data.train_path {reference!r} is not in a data folder this server allows: upload the file with "
            "POST /api/training/datasets and set data.dataset_id, or ask the operator to list its folder in "
            "TUNEFLEET_DATA_DIRS", field="data.train_path")
    return Path(os.path.realpath(path))


async def check_configuration_policy(settings: Settings, pool: asyncpg.Pool, user_id: str,
                                     config: TrainingConfig, attached: tuple[str, ...] = ()) -> None:
    """Refuse (422, naming the field and the fix) what this server does not let a configuration do. ``attached``:
    folders of the workload's machine that its platform fills (see ``attached_to``)."""
    if config.model.trust_remote_code and not settings.allow_remote_code:
        raise ValidationFailed(
            "model.trust_remote_code: this server does not run a model's own code (it would run in preflight on the "
            "server and in local jobs); use a model that transformers supports natively, or ask the operator to set "
            "TUNEFLEET_ALLOW_REMOTE_CODE=true", field="model.trust_remote_code")
    await _check_model_reference(settings, pool, user_id, config.model.base_model, "model.base_model",
                                 attached=attached)
    rlhf = config.training.rlhf
    if config.training.method is Method.RLHF and rlhf.reward_model:
        await _check_model_reference(settings, pool, user_id, rlhf.reward_model, "training.rlhf.reward_model")
    if rlhf.judge_api_key_env:
        raise ValidationFailed(
            "training.rlhf.judge_api_key_env names a variable of the machine the trainer runs on, which through this "
            "API is a server's: store the judge's key with PUT /api/secrets/judge and set "
            "training.rlhf.judge_api_key_secret to \"judge\" instead", field="training.rlhf.judge_api_key_env")
    if rlhf.judge_api_key_secret and not await repository.has_secret(pool, user_id, rlhf.judge_api_key_secret):
        raise ValidationFailed(
            f"training.rlhf.judge_api_key_secret names the secret {rlhf.judge_api_key_secret!r}, which you have not "
            f"stored: PUT /api/secrets/{rlhf.judge_api_key_secret} with {{\"api_key\": \"...\"}} first",
            field="training.rlhf.judge_api_key_secret")


async def check_local_job(settings: Settings, config: TrainingConfig) -> None:
    """A local job's trainer runs on this server: its judge must be at a public address (checked here for a
    clear 422, and again by the trainer at each call, against DNS rebinding)."""
    rlhf = config.training.rlhf
    if config.training.method is not Method.RLHF or not rlhf.judge_url or settings.allow_private_urls:
        return
    url = urlsplit(rlhf.judge_url)
    try:
        await asyncio.to_thread(public_address, url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    except BlockedAddress as exc:
        raise ValidationFailed(f"training.rlhf.judge_url: {exc}; a local job calls it from this server",
                               field="training.rlhf.judge_url") from None

"""A model trained by a provider on one machine, used by services on others: on S3 the provider keeps the attempt's
output in the bucket (unless the workload put it there), and a gateway or model registry with a disk of its own
brings it over the first time it needs it: to list its checkpoints, give it for download, or serve it. On the
folder (one machine) nothing moves."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest

from services.cloud.bundles import RESULT, artifacts_dir, output_key
from services.cloud.output import keep_output, local_output
from services.model_registry.serving.servings import _on_this_machine
from shared.events import ServeRequested
from shared.serving import ServerType
from shared.storage import store_from_settings

from .conftest import gateway_client
from .test_checkpoints_route import HISTORY, auth, checkpoint, visible_job
from .test_workload_storage import on_s3

pytestmark = pytest.mark.usefixtures("s3_credentials")

WEIGHTS = b"adapter weights " * 4096


def trained(settings, job_id: str) -> Path:
    """The attempt's output as a provider leaves it: adapter, a checkpoint, the result, and its own lock file."""
    folder = artifacts_dir(settings, job_id, 1)
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(WEIGHTS)
    step = checkpoint(folder, 6, HISTORY)
    (step / "adapter_config.json").write_text('{"r": 8}')
    (folder / ".train.log.lock").touch()
    (folder / RESULT).write_text(json.dumps({"status": "completed"}))
    return folder


def tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


async def register(pool, job_id: str, adapter: Path) -> uuid.UUID:
    model_id = uuid.uuid4()
    await pool.execute(
        """INSERT INTO models (id, job_id, user_id, name, base_model, adapter_path, method, provider, lora_r)
           VALUES ($1, $2, 'alice', 'm', 'b', $3, 'sft', 'local', 8)""", model_id, job_id, str(adapter))
    return model_id


async def test_on_s3_a_gateway_and_a_registry_on_other_machines_bring_the_output_from_the_bucket(
        migrated, pool, api_key, s3, tmp_path):
    provider = on_s3(migrated, s3)
    gateway = provider.model_copy(update={"home": tmp_path / "gateway-machine"})
    registry = provider.model_copy(update={"home": tmp_path / "registry-machine"})
    job_id = await visible_job(pool)
    folder = trained(provider, job_id)
    await keep_output(provider, job_id, 1)
    store = store_from_settings(provider)
    kept = tar_members(await store.get_bytes(output_key(job_id, 1)))
    assert kept["adapter/adapter_model.safetensors"] == WEIGHTS and ".train.log.lock" not in kept
    assert list(kept)[-1] == RESULT  # last: a reader that sees the result sees the whole output
    model_id = await register(pool, job_id, folder / "adapter")  # the provider's path, as its result says

    async with gateway_client(gateway) as client:
        listed = await client.get(f"/api/training/jobs/{job_id}/checkpoints", headers=auth(api_key))
        assert listed.status_code == 200, listed.text
        here = artifacts_dir(gateway, job_id, 1)
        assert [(c["name"], c["path"]) for c in listed.json()] == [
            ("checkpoints/checkpoint-6", str(here / "checkpoints" / "checkpoint-6"))]
        download = await client.get(f"/api/models/{model_id}/download", headers=auth(api_key))
        assert download.status_code == 200, download.text
        assert tar_members(download.content)["m-v1-adapter/adapter_model.safetensors"] == WEIGHTS
        step = await client.get(f"/api/models/{model_id}/download", headers=auth(api_key),
                                params={"checkpoint": "checkpoints/checkpoint-6"})
        assert step.status_code == 200 and "m-v1-checkpoint-6/trainer_state.json" in tar_members(step.content)

    cmd = ServeRequested(serving_id=str(uuid.uuid4()), user_id="alice", model_id=str(model_id), name="m",
                         server_type=ServerType.BUILTIN, adapter_path=str(folder / "adapter"), base_model="b",
                         job_id=job_id)
    served = _on_this_machine(registry, cmd)
    assert served.adapter_path == str(artifacts_dir(registry, job_id, 1) / "adapter")
    assert Path(served.adapter_path, "adapter_model.safetensors").read_bytes() == WEIGHTS
    assert _on_this_machine(registry, cmd.model_copy(update={"adapter_path": None, "model_path": "/models/base"})
                            ).model_path == "/models/base"  # a path of no attempt's output is left as it is


async def test_an_output_the_workload_put_in_the_bucket_is_kept_as_it_is_and_a_lost_one_is_a_404(
        migrated, pool, api_key, s3, tmp_path):
    provider = on_s3(migrated, s3)
    job_id = await visible_job(pool)
    folder = trained(provider, job_id)
    store = store_from_settings(provider)
    pushed = b"the workload's own archive"
    await store.put_bytes(output_key(job_id, 1), pushed)
    await keep_output(provider, job_id, 1)
    assert await store.get_bytes(output_key(job_id, 1)) == pushed

    lost = await visible_job(pool)
    model_id = await register(pool, lost, artifacts_dir(provider, lost, 1) / "adapter")  # never kept
    async with gateway_client(provider.model_copy(update={"home": tmp_path / "elsewhere"})) as client:
        answer = await client.get(f"/api/models/{model_id}/download", headers=auth(api_key))
    assert answer.status_code == 404 and "no longer on this server" in answer.text
    assert folder.is_dir()


async def test_on_the_folder_the_output_stays_where_it_is(migrated, pool, api_key):
    job_id = await visible_job(pool)
    folder = trained(migrated, job_id)
    await keep_output(migrated, job_id, 1)
    assert not await store_from_settings(migrated).exists(output_key(job_id, 1))
    assert local_output(migrated, str(folder / "adapter")) == folder / "adapter"

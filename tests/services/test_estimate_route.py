"""``POST /api/training/estimate`` through HTTP: a real model's config.json in a model folder the operator allows,
the user's data set, and per GPU whether the job fits, what to change when not, and how long it takes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.gateway import estimating
from shared.catalogue import documented
from shared.errors import ServiceUnavailable, ValidationFailed

from .conftest import gateway_client
from .test_gateway import INSTRUCTION_ROWS, auth, upload

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "model_configs"
A100 = "a100-large"  # Hugging Face Spaces' 80 GB A100: a documented offer, there without cloud credentials


@pytest.fixture
def models(tmp_path: Path, migrated):
    folder = tmp_path / "models" / "llama-3-70b"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / "Meta-Llama-3-70B.json", folder / "config.json")
    (tmp_path / "models" / "empty").mkdir()
    return migrated.model_copy(update={"model_dirs": [tmp_path / "models"]}), folder


def body(folder, dataset_id: str, **training) -> dict:
    return {"config": {"name": "big", "model": {"base_model": str(folder), "max_seq_length": 1024},
                       "data": {"dataset_id": dataset_id}, "training": {"bf16": True, **training}}}


async def test_a_gpu_too_small_is_flagged_and_the_fix_fits(models, api_key):
    settings, folder = models
    async with gateway_client(settings) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()
        r = await client.post("/api/training/estimate", headers=auth(api_key),
                              json={**body(folder, ds["id"]), "gpu_type": A100})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"]["params"] == 70_553_706_496 and answer["data"]["rows"] == 8
        assert answer["memory"]["weights_gib"] == pytest.approx(70_553_706_496 * 2 / 2**30, rel=1e-3)
        [a100] = answer["candidates"]
        assert a100["gpu_type"] == A100 and a100["provider"] == "hfspaces" and not a100["fits"]
        assert "the GPU has" in a100["reason"] and "training.quantization.bits" in a100["reason"]
        r = await client.post("/api/training/estimate", headers=auth(api_key),
                              json={**body(folder, ds["id"], quantization={"bits": 4}, gradient_checkpointing=True,
                                         max_steps=1000),
                                    "gpu_type": A100})
        [a100] = r.json()["candidates"]
        assert a100["fits"] and a100["reason"] is None and a100["hours"] > 0
        assert a100["cost_usd"] == pytest.approx(a100["hours"] * 2.50, abs=1e-4)
        assert any("4 bits" in note for note in r.json()["assumptions"])

        every = (await client.post("/api/training/estimate", headers=auth(api_key),
                                   json=body(folder, ds["id"], quantization={"bits": 4}, max_steps=100))).json()
        candidates = every["candidates"]
        assert {(c["provider"], c["gpu_type"]) for c in candidates} == {
            (o.provider, o.gpu_type) for c in documented() for o in c.offers}  # no cloud credentials: these
        fitting = [c["fits"] for c in candidates]
        assert fitting == sorted(fitting, reverse=True) and True in fitting and False in fitting  # fitting first
        costs = [c["cost_usd"] for c in candidates if c["fits"]]
        assert costs == sorted(costs)
        kaggle = next(c for c in candidates if c["gpu_type"] == "NvidiaTeslaT4")
        assert kaggle["cost_usd"] == 0 and kaggle["gpu_count"] == 1 and not kaggle["fits"]  # 16 GB cards
        r = await client.post("/api/training/estimate", headers=auth(api_key),
                              json={**body(folder, ds["id"], quantization={"bits": 4}, gpu_count=4),
                                    "gpu_type": "l40sx1"})
        [one] = r.json()["candidates"]
        assert not one["fits"] and "offers 1 GPU(s); the configuration trains on 4" in one["reason"]


async def test_bad_estimate_requests_name_the_field(models, api_key):
    settings, folder = models
    async with gateway_client(settings) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()
        r = await client.post("/api/training/estimate", headers=auth(api_key),
                              json={**body(folder, ds["id"]), "gpu_type": "NVIDIA Imaginary 1TB"})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "gpu_type" and A100 in r.text
        assert "GET /api/gpus" in r.text
        r = await client.post("/api/training/estimate", headers=auth(api_key),
                              json=body(folder.parent / "empty", ds["id"]))
        assert r.status_code == 422 and "holds no config.json" in r.text
        r = await client.post("/api/training/estimate", headers=auth(api_key), json=body("/etc", ds["id"]))
        assert r.status_code == 422 and r.json()["detail"]["field"] == "model.base_model"  # not an allowed folder


def test_the_hub_unreachable_is_503_and_a_missing_model_422(monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors as hub

    def offline(*_args, **_kwargs):
        raise hub.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ServiceUnavailable, match="could not be reached"):
        estimating._hub_config("Qwen/Qwen2.5-0.5B", None)

    class Missing(hub.RepositoryNotFoundError):
        def __init__(self):
            Exception.__init__(self, "404")

    def missing(*_args, **_kwargs):
        raise Missing()

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    with pytest.raises(ValidationFailed, match="check the id") as refused:
        estimating._hub_config("nobody/nothing", None)
    assert refused.value.field == "model.base_model"

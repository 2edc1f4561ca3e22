"""A configuration cannot turn the server against itself: each attack tried through the public API (create a
configuration, preflight, deploy), then the judge key's only way in, and the environment workloads get."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from services.cloud.runner import CloudRunner
from services.provider_local.compute import LocalCompute
from shared.config import JUDGE_KEY_ENV, DataFormat, TrainingConfig
from shared.environment import minimal_environment
from shared.events import ProvisionJob

from .conftest import gateway_client
from .test_gateway import INSTRUCTION_ROWS, auth, upload

ROUTES = ("/api/training/configurations", "/api/training/preflight", "/api/training/deploy/local")


def body_for(route: str, config: dict) -> dict:
    return config if route.endswith("configurations") else {"config": config}


async def refused_everywhere(client, key, config: dict, field: str, *words: str) -> None:
    for route in ROUTES:
        r = await client.post(route, headers=auth(key), json=body_for(route, config))
        assert r.status_code == 422, (route, r.text)
        detail = r.json()["detail"]
        fields = [detail.get("field")] + [e["field"].removeprefix("config.") for e in detail.get("errors", [])]
        assert field in fields, (route, detail)
        for word in words:
            assert word in detail["message"], (route, word, detail["message"])


def base(dataset_id: str, **model) -> dict:
    return {"model": {"base_model": "/models/tiny", **model}, "data": {"dataset_id": dataset_id},
            "training": {"max_steps": 1}}


def rlhf(dataset_id: str, **judge) -> dict:
    return {**base(dataset_id), "training": {"method": "rlhf", "max_steps": 1, "rlhf": {
        "judge_url": "https://judge.example.com/v1", "judge_model": "m", "num_generations": 2, **judge}}}


async def test_the_judge_key_cannot_name_a_server_variable_and_must_be_a_stored_secret(migrated, api_key):
    """C1: judge_api_key_env=TUNEFLEET_SECRET_KEY would send the server's signing key to the judge."""
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()["id"]
        await refused_everywhere(client, api_key, rlhf(ds, judge_api_key_env="TUNEFLEET_SECRET_KEY"),
                                 "training.rlhf.judge_api_key_env", "PUT /api/secrets/judge")
        await refused_everywhere(client, api_key, rlhf(ds, judge_api_key_secret="judge"),
                                 "training.rlhf.judge_api_key_secret", "PUT /api/secrets/judge")
        r = await client.put("/api/secrets/judge", headers=auth(api_key), json={"api_key": "sk-judge-0123"})
        assert r.status_code == 204
        r = await client.post(ROUTES[0], headers=auth(api_key), json=rlhf(ds, judge_api_key_secret="judge"))
        assert r.status_code == 201, r.text
        assert "sk-judge-0123" not in r.text


async def test_remote_code_is_refused_unless_the_operator_allows_it(migrated, api_key):
    """C2: trust_remote_code would run a model repository's Python in preflight on this server."""
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()["id"]
        await refused_everywhere(client, api_key, base(ds, trust_remote_code=True), "model.trust_remote_code",
                                 "TUNEFLEET_ALLOW_REMOTE_CODE")
    async with gateway_client(migrated.model_copy(update={"allow_remote_code": True})) as client:
        r = await client.post(ROUTES[0], headers=auth(api_key), json=base(ds, trust_remote_code=True))
        assert r.status_code == 201, r.text


async def test_models_load_from_the_hub_or_allowed_folders_only(migrated, api_key, other_key, pool, tmp_path):
    """C2: a local path outside the operator's folders (an artifacts folder another pod uploaded, /etc, a link that
    leads out) is refused; a user's own registered model is allowed, another user's is not."""
    allowed = tmp_path / "operator-models"
    (allowed / "tiny").mkdir(parents=True)
    (allowed / "escape").symlink_to(tmp_path / "elsewhere")
    settings = migrated.model_copy(update={"model_dirs": [allowed, *migrated.model_dirs]})
    theirs = tmp_path / "artifacts" / "their-job" / "adapter"
    await pool.execute(
        """INSERT INTO models (id, job_id, user_id, name, base_model, adapter_path, method, provider)
           VALUES ($1, $2, 'bob', 'm', 'b', $3, 'sft', 'runpod')""", uuid.uuid4(), uuid.uuid4(), str(theirs))
    async with gateway_client(settings) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()["id"]
        for path in ("/etc", str(allowed / ".." / "x"), str(allowed / "escape" / "m"), str(theirs),
                     str(settings.home / "artifacts")):
            await refused_everywhere(client, api_key, {**base(ds), "model": {"base_model": path}},
                                     "model.base_model", "TUNEFLEET_MODEL_DIRS")
        await refused_everywhere(client, api_key, {**base(ds), "model": {"base_model": "rel/../../etc"}},
                                 "model.base_model", "absolute path")
        reward = {**base(ds), "training": {"method": "rlhf", "rlhf": {"reward_model": "/etc/rm",
                                                                       "num_generations": 2}}}
        await refused_everywhere(client, api_key, reward, "training.rlhf.reward_model", "TUNEFLEET_MODEL_DIRS")
        for ok in (str(allowed / "tiny"), str(settings.models_dir / "mine"), "Qwen/Qwen2.5-0.5B", "gpt2"):
            r = await client.post(ROUTES[0], headers=auth(api_key), json={**base(ds), "model": {"base_model": ok}})
            assert r.status_code == 201, (ok, r.text)
        # An adapter folder names its base model in adapter_config.json, which transformers then loads: a user
        # who rewrote their own adapter's file cannot reach a model outside the allowed folders through it.
        adapter = allowed / "my-adapter"
        adapter.mkdir()
        for named, status in (("/etc/other-users-model", 422), ("Qwen/Qwen2.5-0.5B", 201)):
            (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": named}))
            r = await client.post(ROUTES[0], headers=auth(api_key),
                                  json={**base(ds), "model": {"base_model": str(adapter)}})
            assert r.status_code == status, (named, r.text)
        # bob may fine-tune further from his own registered model
        ds_bob = (await upload(client, other_key, INSTRUCTION_ROWS)).json()["id"]
        r = await client.post(ROUTES[0], headers=auth(other_key),
                              json={**base(ds_bob), "model": {"base_model": str(theirs)}})
        assert r.status_code == 201, r.text


async def test_training_data_comes_from_uploads_or_an_allowed_folder_only(migrated, api_key, tmp_path):
    """H1: data.train_path could read any file the gateway can: /etc/passwd, the data folder's keys, /proc."""
    shared_data = tmp_path / "shared-data"
    shared_data.mkdir()
    good = shared_data / "ok.jsonl"
    good.write_text("\n".join(json.dumps({"text": f"hello {i}"}) for i in range(8)))
    settings = migrated.model_copy(update={"data_dirs": [shared_data]})
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "secret_key").write_text("the-signing-key")
    async with gateway_client(settings) as client:
        for path in ("/etc/passwd", str(settings.home / "secret_key"), "/proc/self/environ", "/proc/self/fd/0",
                     str(shared_data / ".." / "shared-data-not" / "x.jsonl"), "ok.jsonl"):
            config = {"model": {"base_model": "/models/tiny"}, "data": {"train_path": path}}
            await refused_everywhere(client, api_key, config, "data.train_path", "POST /api/training/datasets")
        r = await client.post(ROUTES[0], headers=auth(api_key),
                              json={"model": {"base_model": "/models/tiny"}, "data": {"train_path": str(good)}})
        assert r.status_code == 201, r.text
        assert "the-signing-key" not in r.text


def test_workload_processes_get_a_minimal_environment(monkeypatch):
    for name, value in (("TUNEFLEET_SECRET_KEY", "server-key"), ("TUNEFLEET_DATABASE_URL", "postgresql://x"),
                        ("AWS_SECRET_ACCESS_KEY", "aws"), ("HF_TOKEN", "hf_server"), ("DATABASE_URL", "pg"),
                        ("LC_ALL", "C.UTF-8"), ("HF_HOME", "/cache/hf")):
        monkeypatch.setenv(name, value)
    env = minimal_environment({"JUDGE_API_KEY": "for-this-job"})
    assert not [k for k in env if k.startswith("TUNEFLEET_")]
    assert not {"AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "DATABASE_URL"} & set(env)
    assert env["PATH"] == os.environ["PATH"] and env["LC_ALL"] == "C.UTF-8" and env["HF_HOME"] == "/cache/hf"
    assert env["JUDGE_API_KEY"] == "for-this-job"
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1"  # off unless the operator turns the hub's usage reports on
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "0")
    assert minimal_environment()["HF_HUB_DISABLE_TELEMETRY"] == "0"


@pytest.mark.parametrize("stored", [True, False])
async def test_the_judge_secret_reaches_its_own_workload_only(migrated, api_key, pool, stored):
    async with gateway_client(migrated) as client:
        if stored:
            await client.put("/api/secrets/judge", headers=auth(api_key), json={"api_key": "sk-judge-alice"})
    runner = CloudRunner(LocalCompute(migrated), migrated, pool, report=None)
    config = TrainingConfig.model_validate({
        "model": {"base_model": "/models/tiny"}, "data": {"dataset_id": "d"},
        "training": {"method": "rlhf", "rlhf": {"judge_url": "https://judge.example.com/v1", "judge_model": "m",
                                                 "judge_api_key_secret": "judge", "num_generations": 2}}})
    command = ProvisionJob(job_id=str(uuid.uuid4()), provider="local", user_id="alice", config=config,
                           dataset_path="/x", dataset_format=DataFormat.INSTRUCTION)
    if stored:
        request = await runner._request(command.job_id, 1, {}, command)
        assert request.env == {JUDGE_KEY_ENV: "sk-judge-alice"}
        bobs = command.model_copy(update={"user_id": "bob"})
        with pytest.raises(Exception, match="no judge credentials stored"):
            await runner._request(command.job_id, 1, {}, bobs)
    else:
        with pytest.raises(Exception, match="no judge credentials stored"):
            await runner._request(command.job_id, 1, {}, command)
    sft = command.model_copy(update={"config": TrainingConfig.model_validate(
        {"model": {"base_model": "/models/tiny"}, "data": {"dataset_id": "d"}})})
    assert (await runner._request(sft.job_id, 1, {}, sft)).env == {}


async def test_a_local_job_may_not_aim_its_judge_into_the_servers_network(migrated, api_key):
    """H2: a local job's trainer would call judge_url from this server: metadata services, loopback admin ports."""
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()["id"]
        await client.put("/api/secrets/judge", headers=auth(api_key), json={"api_key": "sk-judge-0123"})
        for url in ("http://169.254.169.254/latest", "http://127.0.0.1:8000/v1", "http://localhost/v1",
                    "http://10.0.0.8/v1", "http://[::1]:9/v1", "http://[::ffff:127.0.0.1]/v1"):
            r = await client.post("/api/training/deploy/local", headers=auth(api_key),
                                  json={"config": rlhf(ds, judge_api_key_secret="judge", judge_url=url)})
            assert r.status_code == 422, (url, r.text)
            assert r.json()["detail"]["field"] == "training.rlhf.judge_url"
            assert "TUNEFLEET_ALLOW_PRIVATE_URLS" in r.json()["detail"]["message"]
        for url in ("https://judge.example.com/v1?x=#", "https://judge.example.com/v1#", "https://u:p@judge/v1"):
            await refused_everywhere(client, api_key, rlhf(ds, judge_api_key_secret="judge", judge_url=url),
                                     "training.rlhf.judge_url", "without '?', '#' or credentials")
    allowing = migrated.model_copy(update={"allow_private_urls": True})
    async with gateway_client(allowing) as client:
        r = await client.post("/api/training/deploy/local", headers=auth(api_key), json={
            "config": rlhf(ds, judge_api_key_secret="judge", judge_url="http://10.0.0.8/v1")})
        assert r.status_code == 202, r.text


@pytest.mark.parametrize("address", ["64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "::a9fe:a9fe", "fec0::1",
                                     "::ffff:10.0.0.8", "169.254.169.254", "100.64.0.1", "0.0.0.0"])
def test_addresses_that_lead_into_a_private_network_are_blocked(address):
    """IPv6 forms that carry an IPv4 address (NAT64, 6to4, IPv4-compatible, mapped) reach that address."""
    from shared.netpolicy import BlockedAddress, public_address

    with pytest.raises(BlockedAddress, match="private, loopback"):
        public_address(address, 443)


def test_public_addresses_pass():
    from shared.netpolicy import public_address

    assert public_address("2606:4700:4700::1111", 443) == "2606:4700:4700::1111"
    assert public_address("8.8.8.8", 80) == "8.8.8.8"


def test_a_judge_port_that_is_no_port_is_a_422_not_a_500():
    from pydantic import ValidationError

    for url in ("https://judge.example.com:99999/v1", "https://judge.example.com:abc/v1"):
        with pytest.raises(ValidationError, match="port"):
            TrainingConfig.model_validate(rlhf("d", judge_url=url))


async def test_a_model_in_a_kaggle_source_folder_is_kaggles_and_never_this_servers(migrated, api_key):
    """/kaggle/input/<source> is a path of a Kaggle kernel: a configuration may name it, and a Kaggle deploy that
    attaches that source may use it; a local deploy or preflight would read this server's /kaggle/input instead,
    and a Kaggle deploy that does not attach it would train on nothing."""
    async with gateway_client(migrated) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()["id"]
        attached = {**base(ds), "model": {"base_model": "/kaggle/input/weights"}}
        saved = await client.post(ROUTES[0], headers=auth(api_key), json=attached)
        assert saved.status_code == 201, saved.text
        for route in ROUTES[1:]:
            r = await client.post(route, headers=auth(api_key), json={"configuration_id": saved.json()["id"]})
            assert r.status_code == 422 and r.json()["detail"]["field"] == "model.base_model", (route, r.text)
        escaping = {**base(ds), "model": {"base_model": "/kaggle/input/weights/../../../etc"}}
        r = await client.post(ROUTES[0], headers=auth(api_key), json=escaping)
        assert r.status_code == 422 and r.json()["detail"]["field"] == "model.base_model"
        assert (await client.put("/api/secrets/kaggle", headers=auth(api_key),
                                 json={"username": "alice", "key": "k" * 16})).status_code == 204
        r = await client.post("/api/training/deploy/kaggle", headers=auth(api_key), json={
            "configuration_id": saved.json()["id"], "notebook_title": "Not attached", "enable_gpu": False,
            "enable_internet": False,
            "dataset_sources": ["alice/other-weights"], "preflight": False})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "model.base_model", r.text

"""Hugging Face Spaces: the real ``huggingface_hub`` client against the Hub emulator (which runs what a Space is
given on a stock machine), and ``SpacesCompute`` against both, without the rest of the stack."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
from pydantic import SecretStr

from services.provider_hfspaces.api_client import mapped
from services.provider_hfspaces.compute import SpacesCompute, space_phase
from services.sandbox.hf_hub import Faults, HubEmulator
from shared.credentials import HuggingFaceCredentials
from shared.errors import ProviderAuthFailed, ProviderError
from shared.events import WorkloadPhase
from shared.providers import WorkloadRequest
from shared.settings import Settings
from tests.cloudstack import EmulatorServer

HF_USER, HF_TOKEN = "hf-alice", "hf_alice_write_token_0123456789"
OTHER_USER, OTHER_TOKEN = "hf-bob", "hf_bob_write_token_0123456789"
IMAGE = Settings.model_fields["runpod_default_image"].default
#: Long enough for a stock machine's Python to start; every wait below ends as soon as its condition holds.
WAIT_S = 90.0

APP = """
import http.server, os
print("secret length", len(os.environ.get("APP_SECRET", "")), "variable", os.environ.get("APP_VARIABLE"), flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
README = "---\ntitle: test\nsdk: docker\napp_port: 7860\n---\n"


def dockerfile(image: str = IMAGE, cmd: str = '["python3", "app.py"]') -> str:
    return f"FROM {image}\nWORKDIR /app\nCOPY . /app\nENV PYTHONUNBUFFERED=1\nEXPOSE 7860\nCMD {cmd}\n"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, stock_images) -> HubEmulator:
    emulator = HubEmulator(tmp_path_factory.mktemp("hf"), {HF_USER: HF_TOKEN, OTHER_USER: OTHER_TOKEN},
                           stock=stock_images, build_s=1.0)
    with EmulatorServer(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture(autouse=True)
def fresh_faults(hub, monkeypatch):
    hub.faults = Faults()
    hub.app_start_timeout_s = 60.0
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    # The emulator serves the LFS batch path, not Xet storage (hf_xet is installed here).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)


def api(hub: HubEmulator, token: str = HF_TOKEN) -> HfApi:
    return HfApi(endpoint=hub.url, token=token)


def wait_for_stage(client: HfApi, space_id: str, *stages: str) -> str:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        stage = client.get_space_runtime(space_id).stage
        if stage in stages:
            return stage
        time.sleep(0.2)
    return client.get_space_runtime(space_id).stage


def space(hub: HubEmulator, name: str, files: dict[str, str], *, hardware: str = "t4-small") -> str:
    client, space_id = api(hub), f"{HF_USER}/{name}"
    client.create_repo(space_id, repo_type="space", space_sdk="docker", private=True, space_hardware=hardware,
                       space_secrets=[{"key": "APP_SECRET", "value": "s3cret-value"}],
                       space_variables=[{"key": "APP_VARIABLE", "value": "visible"}])
    from huggingface_hub import CommitOperationAdd

    client.create_commit(space_id, [CommitOperationAdd(p, c.encode()) for p, c in files.items()],
                         commit_message="app", repo_type="space")
    return space_id


# The client against the emulator ------------------------------------------------------------------------------


def test_whoami_and_a_refused_token(hub):
    me = api(hub).whoami()
    assert me["name"] == HF_USER and me["auth"]["accessToken"]["role"] == "write"
    with pytest.raises(HfHubHTTPError) as refused:
        api(hub, "hf_not_a_token_0000000000").whoami()
    assert refused.value.response.status_code == 401
    error = mapped(refused.value, "check the token")
    assert isinstance(error, ProviderAuthFailed) and "PUT /api/secrets/huggingface" in error.message


def test_a_space_builds_starts_runs_pauses_and_is_deleted(hub):
    client = api(hub)
    space_id = space(hub, "lifecycle", {"README.md": README, "Dockerfile": dockerfile(), "app.py": APP})
    with pytest.raises(HfHubHTTPError) as duplicate:
        client.create_repo(space_id, repo_type="space", space_sdk="docker")
    assert duplicate.value.response.status_code == 409 and duplicate.value.response.json()["url"]
    assert wait_for_stage(client, space_id, "RUNNING", "BUILD_ERROR", "RUNTIME_ERROR") == "RUNNING"
    assert hub.stages(space_id)[:4] == ["NO_APP_FILE", "BUILDING", "APP_STARTING", "RUNNING"]
    assert hub.spaces[space_id].secrets == {"APP_SECRET": "s3cret-value"}
    assert client.get_space_variables(space_id)["APP_VARIABLE"].value == "visible"
    runtime = client.get_space_runtime(space_id)
    assert runtime.hardware == "t4-small" and runtime.requested_hardware == "t4-small"
    deadline = time.monotonic() + WAIT_S
    logs = ""
    while "secret length 12 variable visible" not in logs and time.monotonic() < deadline:
        logs = "".join(client.fetch_space_logs(space_id))
    assert "secret length 12 variable visible" in logs
    assert any("Step 1/6 : FROM" in line for line in client.fetch_space_logs(space_id, build=True))

    assert client.pause_space(space_id).stage == "PAUSED"
    billed, cost = hub.billed(space_id)
    assert billed > 0 and cost == pytest.approx(0.40 * billed / 3600.0)
    assert hub.billed(space_id)[0] == billed  # paused: free
    assert client.restart_space(space_id).stage == "BUILDING"
    client.delete_repo(space_id, repo_type="space")
    with pytest.raises(RepositoryNotFoundError):
        client.get_space_runtime(space_id)
    assert {"APP_SECRET", "s3cret-value"}.isdisjoint(str(hub.requests).split("'"))


def test_a_build_error_an_app_that_never_answers_and_one_that_exits(hub):
    client = api(hub)
    unknown = space(hub, "unknown-image", {"README.md": README, "Dockerfile": dockerfile("nosuch/image:1")},
                    hardware="cpu-basic")
    assert wait_for_stage(client, unknown, "BUILD_ERROR", "RUNNING") == "BUILD_ERROR"
    assert client.get_space_runtime(unknown).raw["errorMessage"]
    assert "nosuch/image:1: not found" in "".join(client.fetch_space_logs(unknown, build=True))

    hub.app_start_timeout_s = 3.0
    silent = space(hub, "silent", {"README.md": README, "Dockerfile": dockerfile(cmd='["sleep", "600"]')},
                   hardware="cpu-basic")
    assert wait_for_stage(client, silent, "RUNTIME_ERROR", "RUNNING") == "RUNTIME_ERROR"
    assert "Launch timed out" in client.get_space_runtime(silent).raw["errorMessage"]

    exits = space(hub, "exits", {"README.md": README, "Dockerfile": dockerfile(cmd='["python3", "-c", "1"]')},
                  hardware="cpu-basic")
    assert wait_for_stage(client, exits, "RUNTIME_ERROR", "RUNNING") == "RUNTIME_ERROR"
    assert client.get_space_runtime(exits).raw["errorMessage"].startswith("Exit code: 0")


def test_payment_required_and_a_read_only_token(hub):
    client = api(hub)
    hub.faults.payment_required = True
    with pytest.raises(HfHubHTTPError) as unpaid:
        client.create_repo(f"{HF_USER}/paid", repo_type="space", space_sdk="docker", space_hardware="t4-small")
    assert unpaid.value.response.status_code == 402
    client.create_repo(f"{HF_USER}/free", repo_type="space", space_sdk="docker", space_hardware="cpu-basic")

    hub.faults = Faults(read_only={HF_USER})
    assert client.whoami()["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError) as refused:
        client.create_repo(f"{HF_USER}/read-only", repo_type="model")
    assert refused.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as foreign:
        api(hub, OTHER_TOKEN).create_repo(f"{HF_USER}/not-bobs", repo_type="model")
    assert foreign.value.response.status_code == 403


def test_model_repos_info_download_gated_and_private(hub, tmp_path):
    config = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode()
    weights = b"\x00\x01" * 4096
    hub.add_model("org/tiny", {"config.json": config, "model.safetensors": weights})
    hub.add_model("org/gated", {"config.json": config}, gated=True)
    hub.add_model(f"{OTHER_USER}/private", {"config.json": config}, private=True)
    client = api(hub)
    info = client.model_info("org/tiny", files_metadata=True)
    assert len(info.sha) == 40 and info.config["model_type"] == "llama"
    assert {s.rfilename for s in info.siblings} == {"config.json", "model.safetensors"}
    assert next(s for s in info.siblings if s.rfilename == "model.safetensors").lfs.size == len(weights)
    path = hf_hub_download("org/tiny", "model.safetensors", endpoint=hub.url, token=HF_TOKEN, cache_dir=tmp_path)
    assert Path(path).read_bytes() == weights

    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated", "config.json", endpoint=hub.url, token=HF_TOKEN, cache_dir=tmp_path)
    hub.grant("org/gated", HF_USER)
    assert Path(hf_hub_download("org/gated", "config.json", endpoint=hub.url, token=HF_TOKEN,
                                cache_dir=tmp_path)).read_bytes() == config
    with pytest.raises(RepositoryNotFoundError):
        client.model_info(f"{OTHER_USER}/private")
    assert api(hub, OTHER_TOKEN).model_info(f"{OTHER_USER}/private").private


def test_upload_folder_sends_weights_through_lfs(hub, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(b"\x07" * 2048)
    client = api(hub)
    client.create_repo(f"{HF_USER}/adapter", private=True)
    client.upload_folder(folder_path=folder, repo_id=f"{HF_USER}/adapter")
    repo = hub.repos[("model", f"{HF_USER}/adapter")]
    assert repo.lfs == {"adapter_model.safetensors"} and repo.files["adapter_model.safetensors"] == b"\x07" * 2048
    assert ("POST", f"/{HF_USER}/adapter.git/info/lfs/objects/batch", HF_USER) in hub.requests


# SpacesCompute against the emulator --------------------------------------------------------------------------


def test_the_stage_mapping():
    assert space_phase({"stage": "BUILDING"}, 0.4).phase is WorkloadPhase.PROVISIONING
    assert space_phase({"stage": "NO_APP_FILE"}, 0.4).phase is WorkloadPhase.PROVISIONING  # files on their way
    assert space_phase({"stage": "BUILDING"}, 0.4).cost_per_hour == 0.0
    assert space_phase({"stage": "APP_STARTING"}, 0.4).cost_per_hour == 0.4
    assert space_phase({"stage": "RUNNING_BUILDING"}, 0.4).phase is WorkloadPhase.RUNNING
    failed = space_phase({"stage": "RUNTIME_ERROR", "errorMessage": "Exit code: 1"}, 0.4, "Traceback ...")
    assert failed.phase is WorkloadPhase.FAILED and "Exit code: 1" in failed.detail and "Traceback" in failed.detail
    for gone in ("PAUSED", "STOPPED", "SLEEPING", "DELETING"):
        assert space_phase({"stage": gone}, 0.4).phase is None
    assert space_phase(None, 0.4).phase is None


class _Bundle:
    """A signed-URL stand-in: serves one tar.gz whose bootstrap.py records its environment and holds."""

    BOOTSTRAP = ("import json, os, time\n"
                 "open(os.path.join(os.environ['TUNEFLEET_WORKDIR'], 'ran.json'), 'w').write(json.dumps("
                 "{'hold': os.environ.get('TUNEFLEET_HOLD_AFTER_EXIT'), 'cwd': os.getcwd()}))\n"
                 "print('bootstrap ran', flush=True)\n"
                 "time.sleep(3600)\n")

    def __init__(self):
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w:gz") as tar:
            body = self.BOOTSTRAP.encode()
            info = tarfile.TarInfo("bootstrap.py")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        payload = data.getvalue()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/bundle.tar.gz?sig=job-secret-signature"


@pytest.fixture
def bundle():
    served = _Bundle()
    yield served
    served.server.shutdown()


def request_for(compute: SpacesCompute, tmp_path: Path, env: dict, job_id: str | None = None, attempt: int = 1,
                **options) -> WorkloadRequest:
    return WorkloadRequest(job_id=job_id or str(uuid.uuid4()), attempt=attempt, installation=compute.installation,
                           env=env, bundle_dir=tmp_path / "bundle", artifacts_dir=tmp_path / "artifacts",
                           options={"space_name": f"{HF_USER}/job-space", "gpu_tier": "t4-small",
                                    "visibility": "private", **options})


async def until(condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.3)
    raise AssertionError(f"never: {what}")


CREDENTIALS = HuggingFaceCredentials(token=SecretStr(HF_TOKEN))


async def test_validate_refuses_before_anything_is_created(hub, pool, settings, tmp_path):
    compute = SpacesCompute(settings, pool)
    request = request_for(compute, tmp_path, {})
    with pytest.raises(ProviderAuthFailed, match="PUT /api/secrets/huggingface"):
        await compute.validate(request, HuggingFaceCredentials(token=SecretStr("hf_wrong_token_000000")))
    with pytest.raises(ProviderError, match="space_name") as foreign:
        await compute.validate(request_for(compute, tmp_path, {}, space_name=f"{OTHER_USER}/x"), CREDENTIALS)
    assert "write" in foreign.value.message
    with pytest.raises(ProviderError, match="gpu_tier"):
        await compute.validate(request_for(compute, tmp_path, {}, gpu_tier="h100-huge"), CREDENTIALS)
    hub.faults.read_only.add(HF_USER)
    with pytest.raises(ProviderError, match="read-only") as read_only:
        await compute.validate(request, CREDENTIALS)
    assert "space_name" in read_only.value.message
    hub.faults.read_only.clear()
    api(hub).create_repo(f"{HF_USER}/someone-elses", repo_type="space", space_sdk="docker")
    with pytest.raises(ProviderError, match="not created for this job"):
        await compute.validate(request_for(compute, tmp_path, {}, space_name=f"{HF_USER}/someone-elses"),
                               CREDENTIALS)
    assert (f"{HF_USER}/job-space" not in hub.spaces) and (OTHER_USER + "/x" not in hub.spaces)


async def test_a_space_runs_the_bundle_is_priced_found_and_paused(hub, pool, settings, tmp_path, bundle):
    compute = SpacesCompute(settings, pool)
    env = {"TUNEFLEET_BUNDLE_URL": bundle.url, "TUNEFLEET_HOLD_AFTER_EXIT": "1"}
    request = request_for(compute, tmp_path, env, space_name=f"{HF_USER}/runs")
    await compute.validate(request, CREDENTIALS)
    provisioned = await compute.provision(request, CREDENTIALS)
    assert provisioned.resource_id == f"{HF_USER}/runs" and provisioned.cost_per_hour == 0.0
    space_ = hub.spaces[provisioned.resource_id]
    assert space_.secrets["TUNEFLEET_BUNDLE_URL"] == bundle.url
    assert all(bundle.url.encode() not in data and b"job-secret" not in data for data in space_.repo.files.values())
    assert space_.repo.private and space_.hardware == "t4-small"

    async def running():
        status = await compute.status(provisioned.resource_id, CREDENTIALS)
        return status if status.phase is not WorkloadPhase.PROVISIONING else None

    status = await until(running, "the Space runs")
    assert status.phase is WorkloadPhase.RUNNING, status.detail
    assert status.cost_per_hour == pytest.approx(0.40)
    ran = space_.folder / "root" / "tmp" / "tunefleet-job" / "ran.json"
    await until(lambda: asyncio.sleep(0, ran.exists()), "the bootstrap ran")
    assert json.loads(ran.read_text())["hold"] == "1"
    assert (await compute.find(request.name, CREDENTIALS)).resource_id == provisioned.resource_id
    assert [r.job_id for r in await compute.list_own(CREDENTIALS)] == [request.job_id]

    await compute.terminate(provisioned.resource_id, CREDENTIALS)
    assert space_.stage == "PAUSED" and hub.billed(provisioned.resource_id)[0] > 0
    gone = await compute.status(provisioned.resource_id, CREDENTIALS)
    assert gone.phase is None and gone.cost_per_hour == 0.0
    assert await compute.find(request.name, CREDENTIALS) is None and await compute.list_own(CREDENTIALS) == []

    second = request_for(compute, tmp_path, env, job_id=request.job_id, attempt=2, space_name=f"{HF_USER}/runs")
    assert (await compute.provision(second, CREDENTIALS)).resource_id == provisioned.resource_id
    assert space_.variables["TUNEFLEET_RESOURCE"]["value"] == second.name and space_.stage == "BUILDING"
    with pytest.raises(ProviderError, match="space_name"):
        await compute.provision(request_for(compute, tmp_path, env, space_name=f"{HF_USER}/runs"), CREDENTIALS)
    await compute.terminate(provisioned.resource_id, CREDENTIALS)


async def test_a_build_error_fails_with_the_build_log(hub, pool, settings, tmp_path, bundle):
    compute = SpacesCompute(settings, pool)
    hub.faults.build_error = "pip install: no matching distribution for torch==0.0"
    request = request_for(compute, tmp_path, {"TUNEFLEET_BUNDLE_URL": bundle.url}, space_name=f"{HF_USER}/breaks",
                          delete_on_finish=True)
    provisioned = await compute.provision(request, CREDENTIALS)

    async def failed():
        status = await compute.status(provisioned.resource_id, CREDENTIALS)
        return status if status.phase is WorkloadPhase.FAILED else None

    status = await until(failed, "the build fails")
    assert "BUILD_ERROR" in status.detail and "no matching distribution" in status.detail
    await compute.terminate(provisioned.resource_id, CREDENTIALS)
    assert f"{HF_USER}/breaks" not in hub.spaces
    await compute.terminate(provisioned.resource_id, CREDENTIALS)  # already gone: silent


async def test_payment_required_names_the_gpu_tier(hub, pool, settings, tmp_path):
    compute = SpacesCompute(settings, pool)
    hub.faults.payment_required = True
    with pytest.raises(ProviderError, match="payment method") as unpaid:
        await compute.provision(request_for(compute, tmp_path, {}, space_name=f"{HF_USER}/unpaid"), CREDENTIALS)
    assert "t4-small" in unpaid.value.message and "cpu-basic" in unpaid.value.message


async def test_deliver_pushes_the_adapter_and_the_catalogue_has_live_prices(hub, pool, settings, tmp_path):
    compute = SpacesCompute(settings, pool)
    request = request_for(compute, tmp_path, {}, push_to_hub=f"{HF_USER}/tuned")
    adapter = request.artifacts_dir / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\x01" * 4096)
    (adapter / "leak").symlink_to(tmp_path / "outside.txt")
    (tmp_path / "outside.txt").write_text("server file")
    note = await compute.deliver(request, CREDENTIALS, None)
    assert note == f"adapter pushed to {hub.url}/{HF_USER}/tuned"
    repo = hub.repos[("model", f"{HF_USER}/tuned")]
    assert repo.private and set(repo.files) == {".gitattributes", "adapter_config.json", "adapter_model.safetensors"}
    assert "adapter_model.safetensors" in repo.lfs
    assert await compute.deliver(request_for(compute, tmp_path, {}), CREDENTIALS, None) is None

    offers = {o.gpu_type: o for o in await compute.catalogue(CREDENTIALS)}
    assert "cpu-basic" not in offers and offers["a100-large"].usd_per_hour == pytest.approx(4.0)
    assert offers["t4-small"].vram_gb == 16

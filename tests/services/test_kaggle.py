"""The Kaggle provider through the real ``kaggle`` client against the Kaggle emulator: pushes, the status clock,
output paging, auth, the GPU quota, two users at once, and ``KaggleCompute`` running a tiny script workload."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from services.cloud.bundles import bundle_dir
from services.provider_kaggle import kernel as kernel_files
from services.provider_kaggle.api_client import KaggleClient, NotFound
from services.provider_kaggle.compute import KaggleCompute, kernel_phase
from services.sandbox.kaggle import KaggleEmulator
from shared.credentials import KaggleCredentials
from shared.errors import ProviderAuthFailed, ProviderError
from shared.events import WorkloadPhase
from shared.providers import WorkloadRequest, installation_id
from shared.settings import Settings
from tests.cloudstack import EmulatorServer

KAGGLE_USER, KAGGLE_KEY = "kaggle-alice", "kaggle-key-alice-0123456789"
OTHER_USER, OTHER_KEY = "kaggle-bob", "kaggle-key-bob-0123456789"
SECRET = "test-secret-key-0123456789-abcdefghij"


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory, stock_images):
    emulator = KaggleEmulator(tmp_path_factory.mktemp("kaggle"), {KAGGLE_USER: KAGGLE_KEY, OTHER_USER: OTHER_KEY},
                              stock=stock_images, queue_s=1.0)
    with EmulatorServer(emulator.app) as server:
        emulator.url = server.url
        yield emulator
    emulator.close()


@pytest.fixture
def base_url(kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_BASE_URL", kaggle.url)
    kaggle.faults.__init__()
    return kaggle.url


def alice() -> KaggleCredentials:
    return KaggleCredentials(username=KAGGLE_USER, key=SecretStr(KAGGLE_KEY))


def bob_by_token() -> KaggleCredentials:
    return KaggleCredentials(api_token=SecretStr(OTHER_KEY))


def push_folder(tmp_path: Path, owner: str, slug: str, script: str, **meta) -> Path:
    folder = tmp_path / slug
    folder.mkdir()
    (folder / "run.py").write_text(script)
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": f"{owner}/{slug}", "title": slug, "code_file": "run.py", "language": "python",
        "kernel_type": "script", "enable_internet": False, **meta}))
    return folder


async def until(predicate, timeout: float = 120.0):
    """Poll until ``predicate`` answers something true; the limit only guards against a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError("condition not reached")


async def test_push_runs_on_a_clock_and_pages_its_output(base_url, kaggle, tmp_path):
    script = ("import os, sys\nprint('hello from', sys.version_info[:2], os.getcwd())\n"
              "for i in range(25):\n    open(f'out-{i:02}.txt', 'w').write(str(i))\n"
              "try:\n    import trainer\n    print('HAS TRAINER')\nexcept ImportError:\n    print('no trainer')\n")
    client = KaggleClient(alice())
    kaggle.faults.queued_forever = True  # held in the queue while it is looked at: each call takes a process
    try:
        pushed = await client.call("push_kernel",
                                   folder=str(push_folder(tmp_path, KAGGLE_USER, "clock-kernel", script)))
        assert pushed["error"] == "" and pushed["version"] == 1 and f"{KAGGLE_USER}/clock-kernel" in pushed["ref"]
        first = await client.call("kernel_status", slug="clock-kernel")
        assert first["status"] == "QUEUED"
        assert (await client.call("kernel_output", slug="clock-kernel"))["files"] == []  # nothing before the end
    finally:
        kaggle.faults.queued_forever = False
    done = await until(lambda: _ended(client, "clock-kernel"))
    assert done["status"] == "COMPLETE", done
    output = await client.call("kernel_output", slug="clock-kernel")
    assert sorted(f["name"] for f in output["files"]) == [f"out-{i:02}.txt" for i in range(25)]  # two pages
    log = "".join(e["data"] for e in json.loads(output["log"]))
    assert "hello from (3, 11) /kaggle/working" in log and "no trainer" in log
    assert kaggle.pushed()[-1]["text"] == script


async def _ended(client: KaggleClient, slug: str):
    status = await client.call("kernel_status", slug=slug)
    return status if status["status"] in ("COMPLETE", "ERROR") else None


async def test_a_failing_script_errors_with_a_message_and_offline_has_no_network(base_url, tmp_path):
    script = ("import sys, urllib.request\ntry:\n    urllib.request.urlopen(sys.argv[0] and URL, timeout=5)\n"
              "    print('reached the API')\nexcept OSError as e:\n    print('offline:', type(e).__name__)\n"
              "open('/kaggle/input/x', 'w')\n")  # the inputs are read-only: this raises, the exit is non-zero
    client = KaggleClient(alice())
    text = f"URL = {base_url + '/api/v1/x/y'!r}\n" + script
    await client.call("push_kernel", folder=str(push_folder(tmp_path, KAGGLE_USER, "failing-kernel", text)))
    done = await until(lambda: _ended(client, "failing-kernel"))
    assert done["status"] == "ERROR" and "exit code 1" in done["failure_message"]
    status = kernel_phase(done)
    assert status.phase is WorkloadPhase.FAILED and status.finished and "exit code 1" in status.detail
    log = "".join(e["data"] for e in json.loads((await client.call("kernel_output", slug="failing-kernel"))["log"]))
    assert "offline: URLError" in log and "reached the API" not in log and "Read-only file system" in log


async def test_a_kernel_queued_for_long_stays_queued_and_one_killed_mid_run_errors_with_kaggles_message(
        base_url, kaggle, tmp_path):
    client = KaggleClient(alice())
    kaggle.faults.queued_forever = True
    await client.call("push_kernel", folder=str(push_folder(tmp_path, KAGGLE_USER, "queued-kernel", "print(1)")))
    await asyncio.sleep(3 * kaggle.queue_s)  # past the emulator's queue time: the fault keeps it queued
    queued = await client.call("kernel_status", slug="queued-kernel")
    assert kernel_phase(queued).phase is WorkloadPhase.PROVISIONING and not kernel_phase(queued).finished
    kaggle.faults.queued_forever = False
    assert (await until(lambda: _ended(client, "queued-kernel")))["status"] == "COMPLETE"

    kaggle.faults.kill_next_run_after_s = 1.0
    await client.call("push_kernel", folder=str(push_folder(tmp_path, KAGGLE_USER, "killed-kernel",
                                                            "import time\ntime.sleep(120)\n")))
    done = await until(lambda: _ended(client, "killed-kernel"))
    status = kernel_phase(done)
    assert status.phase is WorkloadPhase.FAILED and status.finished
    assert kaggle.faults.kill_message in status.detail


def test_the_status_mapping():
    assert kernel_phase({}).phase is WorkloadPhase.PROVISIONING  # an absent status is QUEUED
    assert kernel_phase({"status": "RUNNING"}).phase is WorkloadPhase.RUNNING
    complete = kernel_phase({"status": "COMPLETE"})
    assert complete.finished and complete.phase is WorkloadPhase.RUNNING and complete.cost_per_hour == 0.0
    for cancelled in ("CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"):
        assert kernel_phase({"status": cancelled}).phase is None
    assert kernel_phase(None).phase is None


async def test_bad_credentials_and_the_gpu_quota_are_named(base_url, kaggle, tmp_path):
    wrong = KaggleClient(KaggleCredentials(username=KAGGLE_USER, key=SecretStr("not-the-key-000")))
    with pytest.raises(ProviderAuthFailed, match="PUT /api/secrets/kaggle"):
        await wrong.call("whoami")
    with pytest.raises(ProviderAuthFailed, match="PUT /api/secrets/kaggle"):
        await KaggleClient(KaggleCredentials(api_token=SecretStr("no-such-token-123"))).call("whoami")
    kaggle.faults.gpu_quota_exhausted = True
    pushed = await KaggleClient(alice()).call(
        "push_kernel", folder=str(push_folder(tmp_path, KAGGLE_USER, "gpu-kernel", "print(1)", enable_gpu=True)))
    assert "quota" in pushed["error"]


async def test_two_users_at_once_each_act_as_themselves(base_url, kaggle, tmp_path):
    a, b = KaggleClient(alice()), KaggleClient(bob_by_token())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    names = await asyncio.gather(*(c.call("whoami") for c in (a, b, a, b)))
    assert names == [KAGGLE_USER, OTHER_USER, KAGGLE_USER, OTHER_USER]
    await asyncio.gather(
        a.call("push_kernel", folder=str(push_folder(tmp_path / "a", KAGGLE_USER, "mine-only", "print(1)",
                                                      is_private=True))),
        b.call("push_kernel", folder=str(push_folder(tmp_path / "b", OTHER_USER, "bobs-kernel", "print(2)"))))
    assert kaggle.kernel(KAGGLE_USER, "mine-only") and kaggle.kernel(OTHER_USER, "bobs-kernel")
    assert [k["slug"] for k in await b.call("list_kernels", search="mine-only")] == []
    with pytest.raises(NotFound):
        await b.call("kernel_status", slug="mine-only")
    async with httpx.AsyncClient() as http:
        denied = await http.post(f"{base_url}/api/v1/kernels.KernelsApiService/GetKernelSessionStatus",
                                 json={"userName": KAGGLE_USER, "kernelSlug": "mine-only"},
                                 headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert denied.status_code == 403 and denied.json()["code"] == 403 and "denied" in denied.json()["message"]
    pushed_by = {(user, body["slug"]) for user, method, body in kaggle.requests if method.endswith("SaveKernel")}
    assert (KAGGLE_USER, f"{KAGGLE_USER}/mine-only") in pushed_by and (OTHER_USER, f"{OTHER_USER}/bobs-kernel") \
        in pushed_by


def test_slugs_fit_kaggle_and_read_back():
    job = str(uuid.uuid4())
    installation = installation_id(SECRET)
    slug = kernel_files.slug_for(installation, job, 12)
    assert 6 <= len(slug) <= 50 and slug == slug.lower()
    assert kernel_files.parse_slug(slug, installation) == (job, 12)
    assert kernel_files.parse_slug(slug, "0" * 8) is None
    assert "://" not in kernel_files.KERNEL_SCRIPT  # fixed text: no URL (nor anything else of a job) in it


def _request(settings: Settings, tmp_path: Path, env: dict, **options) -> WorkloadRequest:
    job = str(uuid.uuid4())
    bundle = bundle_dir(settings, job, 1)  # where the runner lays it out: the compute archives and stores it there
    bundle.mkdir(parents=True)
    return WorkloadRequest(job_id=job, attempt=1, installation=installation_id(SECRET), env=env, bundle_dir=bundle,
                           artifacts_dir=tmp_path / "artifacts",
                           options={"notebook_title": "My tiny job", "enable_gpu": False, "enable_internet": True,
                                    **options})


async def test_compute_pushes_a_kernel_finds_it_and_collects_its_output(base_url, kaggle, tmp_path):
    """The kernel script fetches the bundle through its signed URL (served here by a stand-in gateway); its bootstrap
    is a stand-in too: it writes a result and an adapter file."""
    from urllib.parse import parse_qs, urlsplit

    from starlette.applications import Starlette
    from starlette.responses import FileResponse
    from starlette.routing import Route

    bootstrap = ("import json, os\nos.makedirs('output/adapter', exist_ok=True)\n"
                 "open('output/adapter/weights.bin', 'w').write('w')\n"
                 "json.dump({'status': 'completed', 'output_dir': 'output'}, open('output/result.json', 'w'))\n"
                 "env = json.load(open('env.json'))\n"
                 "print('stand-in bootstrap done; the bundle brought', sorted(env))\n")
    fetched = []

    def bundle(r):
        fetched.append(r.url.path)
        return FileResponse(request.bundle_archive)

    gateway = EmulatorServer(Starlette(routes=[Route("/api/bundles/{job}/{attempt}/bundle.tar.gz", bundle)]))
    settings = Settings(home=tmp_path / "home", secret_key=SECRET, gateway_public_url=gateway.url)
    compute = KaggleCompute(settings)
    with gateway:
        request = _request(settings, tmp_path, {"TUNEFLEET_BUNDLE_URL": "https://gateway/the-7-day-url",
                                                "TUNEFLEET_HEARTBEAT_URL": "https://gateway/heartbeat?sig=x",
                                                "JUDGE_API_KEY": "must-not-travel"}, session_timeout_s=3600)
        (request.bundle_dir / "bootstrap.py").write_text(bootstrap)
        await compute.validate(request, alice())
        assert await compute.find(request.name, alice()) is None
        provisioned = await compute.provision(request, alice())
        assert (await compute.find(request.name, alice())).resource_id == provisioned.resource_id
        assert [(r.job_id, r.attempt) for r in await compute.list_own(alice())] == [(request.job_id, 1)]
        status = await until(lambda: _finished(compute, provisioned.resource_id))
        assert status.phase is WorkloadPhase.RUNNING and status.finished and status.cost_per_hour == 0.0
        await compute.collect(provisioned.resource_id, request, alice())
    assert fetched == [f"/api/bundles/{request.job_id}/1/bundle.tar.gz"]
    assert json.loads((request.artifacts_dir / "result.json").read_text())["status"] == "completed"
    assert (request.artifacts_dir / "adapter" / "weights.bin").read_text() == "w"
    tail = (request.artifacts_dir / "log-tail.txt").read_text()
    assert "stand-in bootstrap done; the bundle brought ['JUDGE_API_KEY', 'TUNEFLEET_HEARTBEAT_URL']" in tail
    assert kaggle.pushed()[-1]["text"] == kernel_files.KERNEL_SCRIPT and kaggle.pushed()[-1]["isPrivate"]
    dataset = next(d for d in kaggle.datasets.values() if d.slug == provisioned.resource_id.split("/")[1])
    assert dataset.files == ["env.json"]
    pushed_env = json.loads((dataset.folder / "env.json").read_text())
    assert sorted(pushed_env) == ["TUNEFLEET_BUNDLE_URL"]  # the report URLs and the judge's key stay in the bundle
    expires = int(parse_qs(urlsplit(pushed_env["TUNEFLEET_BUNDLE_URL"]).query)["expires"][0])
    assert expires - time.time() < 3600 + 2 * 3600 + 60  # the session and its queue, not the week a pod's URL has
    await compute.terminate(provisioned.resource_id, alice())
    await compute.terminate(provisioned.resource_id, alice())  # idempotent
    assert await compute.find(request.name, alice()) is None
    await compute.tidy(alice(), set())
    assert dataset.slug not in {d.slug for d in kaggle.datasets.values()}


async def _finished(compute: KaggleCompute, resource_id: str):
    status = await compute.status(resource_id, alice())
    return status if status.finished else None


async def test_compute_maps_the_quota_and_bad_credentials(base_url, kaggle, tmp_path):
    settings = Settings(home=tmp_path / "home", secret_key=SECRET)
    compute = KaggleCompute(settings)
    request = _request(settings, tmp_path, {"TUNEFLEET_BUNDLE_URL": "http://127.0.0.1:1/b"}, enable_gpu=True)
    bad = KaggleCredentials(username=KAGGLE_USER, key=SecretStr("wrong-key-0000"))
    with pytest.raises(ProviderAuthFailed, match="store a valid Kaggle username and key"):
        await compute.validate(request, bad)
    kaggle.faults.gpu_quota_exhausted = True
    with pytest.raises(ProviderError, match="weekly GPU quota"):
        await compute.provision(request, alice())
    assert compute.pushes({"enable_internet": True}) and not compute.offline({"enable_internet": True})
    assert compute.offline({"enable_internet": False}) and not compute.pushes({"enable_internet": False})
    assert kernel_phase({}).phase is WorkloadPhase.PROVISIONING  # an absent status is QUEUED
    assert kernel_phase({"status": "CANCEL_ACKNOWLEDGED"}).phase is None

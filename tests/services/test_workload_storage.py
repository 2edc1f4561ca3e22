"""What a remote workload fetches and sends, on each store: on the folder, the gateway's signed routes; on S3 (``rclone
serve s3`` on loopback, which checks every signature), presigned URLs of the bucket, signed for the host the
workloads reach, so a bundle and an output never pass through the gateway. The provider brings a pushed output into
the artifacts folder once, and refuses one that is too big or unsafe with a result that says why."""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
import urllib.error
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from services.cloud.bundles import (
    RESULT,
    add_bundle_env,
    artifacts_dir,
    bundle_dir,
    bundle_key,
    bundle_url,
    output_key,
    workload_env,
)
from services.cloud.output import fetch_pushed_output
from shared.jobspec import TrainerResult
from shared.settings import Settings
from shared.signing import signed_url
from shared.storage import LocalStore, S3Store, store_from_settings
from tests.objectstore import S3Server

from .conftest import gateway_client, served_gateway
from .test_untrusted_uploads import _file, _tar_gz

GATEWAY = "https://tunefleet.example.com"


pytestmark = pytest.mark.usefixtures("s3_credentials")


def on_s3(settings: Settings, s3: S3Server, **more) -> Settings:
    """The settings of a stack whose files are in a new bucket. The services reach S3 at 127.0.0.1, workloads at
    ``localhost``: another host name of the same server, as a cluster's MinIO is reached by a public hostname."""
    public = s3.endpoint.replace("127.0.0.1", "localhost")
    return settings.model_copy(update={
        "storage_backend": "s3", "s3_bucket": s3.new_bucket(), "s3_endpoint_url": s3.endpoint,
        "s3_public_endpoint_url": public, "s3_prefix": "team-a", "gateway_public_url": GATEWAY, **more})


def a_bundle(settings: Settings) -> str:
    """A job whose attempt 1 has a remote bundle (its folder, archived and stored, as ``write_bundle`` leaves it)."""
    job_id = str(uuid.uuid4())
    folder = bundle_dir(settings, job_id, 1)
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"job_id": job_id}))
    add_bundle_env(settings, job_id, 1, {"TUNEFLEET_EXAMPLE": "1"})
    return job_id


def members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


async def test_on_s3_a_workload_fetches_its_bundle_and_sends_its_output_through_the_bucket(settings, s3):
    settings = on_s3(settings, s3)
    job_id = a_bundle(settings)
    env = workload_env(settings, job_id, 1, resume=False, push=True)
    public = urlsplit(settings.s3_public_endpoint_url)
    for name in ("TUNEFLEET_BUNDLE_URL", "TUNEFLEET_ARTIFACTS_URL"):
        url = urlsplit(env[name])
        assert (url.scheme, url.netloc) == (public.scheme, public.netloc), env[name]
        assert "X-Amz-Signature=" in url.query and "X-Amz-Expires=604800" in url.query  # S3's longest
    assert env["TUNEFLEET_HEARTBEAT_URL"].startswith(f"{GATEWAY}/api/bundles/{job_id}/1/heartbeat?")

    async with httpx.AsyncClient(timeout=30) as workload:  # no credentials: the URLs are the permission
        bundle = await workload.get(env["TUNEFLEET_BUNDLE_URL"])
        assert bundle.status_code == 200, bundle.text
        assert json.loads(members(bundle.content)["env.json"]) == {"TUNEFLEET_EXAMPLE": "1"}
        other = env["TUNEFLEET_BUNDLE_URL"].replace(job_id, str(uuid.uuid4()))
        assert (await workload.get(other)).status_code == 403  # the signature covers the key

        assert await fetch_pushed_output(settings, job_id, 1) is False  # nothing put yet
        output = _tar_gz([_file("adapter/adapter_config.json", b"{}"),
                          _file(RESULT, TrainerResult(status="completed", global_step=8).model_dump_json().encode())])
        put = await workload.put(env["TUNEFLEET_ARTIFACTS_URL"], content=output,
                                 headers={"content-type": "application/gzip"})  # as the bootstrap sends it
        assert put.status_code == 200, put.text

    store = store_from_settings(settings)
    assert await store.keys("") == sorted([bundle_key(job_id, 1), output_key(job_id, 1)])
    assert await fetch_pushed_output(settings, job_id, 1) is True
    folder = artifacts_dir(settings, job_id, 1)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "adapter", "adapter/adapter_config.json", RESULT]
    assert TrainerResult.model_validate_json((folder / RESULT).read_text()).global_step == 8
    assert await fetch_pushed_output(settings, job_id, 1) is False  # once: the result is in


@pytest.mark.parametrize(("archive", "words"), [
    (_tar_gz([_file("adapter/weights.bin", b"\0" * (3 * 2**20))]), "decompressed"),
    (_tar_gz([_file("../escape.txt", b"x")]), "plain relative name"),
    (b"not a tar.gz", "could not be unpacked"),
])
async def test_an_output_in_the_bucket_that_would_be_refused_at_the_gateway_fails_the_attempt_with_why(
        settings, s3, archive, words):
    settings = on_s3(settings, s3, max_artifacts_gb=1 / 1024)  # 1 MiB decompressed
    job_id = str(uuid.uuid4())
    await store_from_settings(settings).put_bytes(output_key(job_id, 1), archive)
    assert await fetch_pushed_output(settings, job_id, 1) is True
    folder = artifacts_dir(settings, job_id, 1)
    result = TrainerResult.model_validate_json((folder / RESULT).read_text())
    assert (result.status, result.error_type) == ("failed", "OutputRefused") and words in result.error_message
    assert sorted(p.name for p in folder.iterdir()) == [RESULT]
    assert not (folder.parent / "escape.txt").exists() and not list(folder.parent.glob(".download-*"))


async def test_an_output_over_the_limit_is_refused_before_it_is_downloaded(settings, s3):
    settings = on_s3(settings, s3, max_artifacts_gb=1 / 2**30)  # 1 byte
    job_id = str(uuid.uuid4())
    await store_from_settings(settings).put_bytes(output_key(job_id, 1), b"x" * 4096)
    assert await fetch_pushed_output(settings, job_id, 1) is True
    result = TrainerResult.model_validate_json((artifacts_dir(settings, job_id, 1) / RESULT).read_text())
    assert result.status == "failed" and "TUNEFLEET_MAX_ARTIFACTS_GB" in result.error_message


async def test_on_the_folder_workloads_use_the_gateways_signed_routes_and_any_replica_serves_the_bundle(
        migrated, tmp_path):
    settings = migrated.model_copy(update={"gateway_public_url": GATEWAY})
    job_id = a_bundle(settings)
    env = workload_env(settings, job_id, 1, resume=False, push=True)
    assert env["TUNEFLEET_BUNDLE_URL"].startswith(f"{GATEWAY}/api/bundles/{job_id}/1/bundle.tar.gz?")
    assert env["TUNEFLEET_ARTIFACTS_URL"].startswith(f"{GATEWAY}/api/bundles/{job_id}/1/artifacts?")
    assert await fetch_pushed_output(settings, job_id, 1) is False
    store = store_from_settings(settings)
    assert isinstance(store, LocalStore) and store.local_path(bundle_key(job_id, 1)).is_file()

    # another replica: its own disk, the same object store (here a folder both mount); it never wrote the bundle
    other = settings.model_copy(update={"home": tmp_path / "replica-2"})
    other.home.mkdir()
    (other.home / "objects").symlink_to(settings.home / "objects")
    async with gateway_client(other) as client:
        answer = await client.get(env["TUNEFLEET_BUNDLE_URL"].removeprefix(GATEWAY))
        assert answer.status_code == 200, answer.text
        assert "env.json" in members(answer.content)
        another = env["TUNEFLEET_BUNDLE_URL"].removeprefix(GATEWAY).replace("/1/bundle", "/2/bundle")
        assert (await client.get(another)).status_code == 403  # another path: the signature does not cover it
        unbuilt = bundle_url(settings, job_id, 2, 600).removeprefix(GATEWAY)
        answer = await client.get(unbuilt)
        assert answer.status_code == 404 and "attempt 2" in answer.text


async def test_on_s3_an_earlier_gateway_bundle_url_redirects_to_the_bucket(migrated, s3):
    settings = on_s3(migrated, s3)
    job_id = a_bundle(settings)
    local = workload_env(migrated.model_copy(update={"gateway_public_url": GATEWAY}), job_id, 1, resume=False,
                         push=False)["TUNEFLEET_BUNDLE_URL"]  # issued while the stack kept its files on disk
    async with gateway_client(settings) as client:
        answer = await client.get(local.removeprefix(GATEWAY))
        assert answer.status_code == 307
        target = answer.headers["location"]
        assert target.startswith(settings.s3_public_endpoint_url) and "X-Amz-Signature=" in target
    async with httpx.AsyncClient(timeout=30) as workload:
        fetched = await workload.get(target)
        assert fetched.status_code == 200 and "env.json" in members(fetched.content)
    assert isinstance(store_from_settings(settings), S3Store)


def a_checkpoint(step: int) -> bytes:
    return _tar_gz([_file(f"checkpoint-{step}/trainer_state.json", json.dumps({"global_step": step}).encode()),
                    _file(f"checkpoint-{step}/adapter_model.safetensors", b"w" * step)])


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_checkpoints_are_checked_kept_newest_only_in_the_store_and_served_by_any_replica(
        migrated, s3, tmp_path, backend):
    settings = on_s3(migrated, s3) if backend == "s3" else migrated.model_copy(update={"gateway_public_url": GATEWAY})
    job_id = str(uuid.uuid4())
    put = signed_url(settings.require_secret_key(), GATEWAY, "PUT", f"/api/bundles/{job_id}/1/checkpoint", 600)
    get = signed_url(settings.require_secret_key(), GATEWAY, "GET", f"/api/bundles/{job_id}/2/checkpoint.tar.gz",
                     600)
    store, archives = store_from_settings(settings), {step: a_checkpoint(step) for step in (5, 10, 7)}
    async with gateway_client(settings) as client:
        assert (await client.get(get.removeprefix(GATEWAY))).status_code == 404  # none yet
        unsafe = _tar_gz([_file("checkpoint-3/trainer_state.json", b"{}"), _file("../escape", b"x")])
        refused = await client.put(put.removeprefix(GATEWAY), content=unsafe)
        assert refused.status_code == 422 and "unsafe path" in refused.text
        for archive in archives.values():  # a late upload of an older step does not replace the newer one
            assert (await client.put(put.removeprefix(GATEWAY), content=archive)).status_code == 204
        assert await store.keys(f"checkpoints/{job_id}/") == [f"checkpoints/{job_id}/checkpoint-10.tar.gz"]
        assert not list((settings.home / "spool").iterdir())

    # a later attempt fetches it through another replica (its own disk; the same store)
    other = settings.model_copy(update={"home": tmp_path / "replica-2"})
    other.home.mkdir()
    if backend == "local":
        (other.home / "objects").symlink_to(settings.home / "objects")
    async with gateway_client(other) as client, httpx.AsyncClient(timeout=30) as workload:
        answer = await client.get(get.removeprefix(GATEWAY))
        if backend == "s3":
            assert answer.status_code == 307
            assert answer.headers["location"].startswith(settings.s3_public_endpoint_url)
            answer = await workload.get(answer.headers["location"])
        assert answer.status_code == 200 and answer.content == archives[10]


# A big output: a multipart upload, each part presigned on request and retried alone ------------------------------

def a_workload(tmp_path, env: dict[str, str], files: dict[str, bytes]):
    """A bootstrap whose trainer has ended with ``files`` in its output (as ``Bootstrap.run`` leaves it)."""
    from trainer.bootstrap import Bootstrap

    workdir = tmp_path / f"job-{uuid.uuid4().hex[:8]}"
    (workdir / "output").mkdir(parents=True)
    (workdir / "manifest.json").write_text("{}")
    for name, data in files.items():
        (workdir / "output" / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / "output" / name).write_bytes(data)
    return Bootstrap(str(workdir), env)


def pending_uploads(settings: Settings, s3: S3Server) -> list:
    return s3.client().list_multipart_uploads(Bucket=settings.s3_bucket).get("Uploads", [])


async def test_on_s3_a_big_output_goes_to_the_bucket_in_parts_each_retried_alone(
        migrated, s3, tmp_path, monkeypatch):
    import trainer.bootstrap

    settings = on_s3(migrated, s3, gateway_public_url=None, s3_part_mb=5)
    job_id = str(uuid.uuid4())
    weights = os.urandom(12 * 2**20)  # incompressible: the archive is over 10 MiB, three parts of 5 MiB
    result = TrainerResult(status="completed", global_step=3).model_dump_json().encode()
    sent, failed = [], []

    def flaky_part(url, data):  # the bucket's answer to the second part is lost once, as on a bad link
        if "partNumber=2" in url and not failed:
            failed.append(url)
            raise urllib.error.HTTPError(url, 503, "Slow Down", {}, None)
        sent.append(len(data))
        return real_part(url, data)

    real_part = trainer.bootstrap._put_part
    monkeypatch.setattr(trainer.bootstrap, "_put_part", flaky_part)
    async with served_gateway(settings) as (settings, _url, _app):
        env = workload_env(settings, job_id, 1, resume=False, push=True)
        assert env["TUNEFLEET_ARTIFACTS_PART_BYTES"] == str(5 * 2**20)
        workload = a_workload(tmp_path, env, {"adapter/adapter_model.safetensors": weights, RESULT: result})
        await asyncio.to_thread(workload.upload)
    log = Path(workload.log.path).read_text()
    assert "sending part 2 of 3 of the output failed (HTTP 503); retrying" in log, log
    assert "the output was sent in 3 parts" in log
    assert sent[:2] == [5 * 2**20, 5 * 2**20] and len(sent) == 3 and len(failed) == 1
    assert pending_uploads(settings, s3) == []
    assert not Path(workload.workdir, "output.tar.gz").exists()

    assert await fetch_pushed_output(settings, job_id, 1) is True
    folder = artifacts_dir(settings, job_id, 1)
    assert (folder / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    assert TrainerResult.model_validate_json((folder / RESULT).read_text()).global_step == 3


async def test_on_s3_a_small_output_is_one_presigned_put(migrated, s3, tmp_path, monkeypatch):
    import trainer.bootstrap

    settings = on_s3(migrated, s3, gateway_public_url=None)
    job_id = str(uuid.uuid4())
    monkeypatch.setattr(trainer.bootstrap, "send_in_parts", None)  # calling it would fail the test
    async with served_gateway(settings) as (settings, _url, _app):
        env = workload_env(settings, job_id, 1, resume=False, push=True)
        workload = a_workload(tmp_path, env, {RESULT: b'{"status": "completed"}'})
        await asyncio.to_thread(workload.upload)
    assert await store_from_settings(settings).exists(output_key(job_id, 1))


async def test_the_upload_route_names_what_is_wrong_and_a_refused_upload_leaves_nothing(migrated, s3):
    settings = on_s3(migrated, s3, gateway_public_url=None, s3_part_mb=5, max_artifacts_gb=1)
    job_id = str(uuid.uuid4())
    async with served_gateway(settings) as (settings, _url, _app), httpx.AsyncClient(timeout=30) as workload:
        route = workload_env(settings, job_id, 1, resume=False, push=True)["TUNEFLEET_ARTIFACTS_PARTS_URL"]

        async def step(body: dict) -> httpx.Response:
            return await workload.post(route, json=body)

        too_big = await step({"action": "start", "size": 2 * 2**30})
        assert too_big.status_code == 413 and "over this server's 1 GiB" in too_big.text
        unknown = await step({"action": "resume"})
        assert unknown.status_code == 422 and "start, sign, complete or abort" in unknown.text
        many = await step({"action": "sign", "upload_id": "x", "part_numbers": list(range(1, 102))})
        assert many.status_code == 422 and many.json()["detail"]["field"] == "sign.part_numbers"

        started = (await step({"action": "start", "size": 6 * 2**20})).json()
        assert started["part_bytes"] == 5 * 2**20
        urls = (await step({"action": "sign", "upload_id": started["upload_id"], "part_numbers": [1, 2]})).json()
        first = await workload.put(urls["urls"]["1"], content=os.urandom(5 * 2**20))
        assert first.status_code == 200, first.text
        wrong = await step({"action": "complete", "upload_id": started["upload_id"],
                            "parts": [{"part_number": 1, "etag": '"0123456789abcdef0123456789abcdef"'}]})
        assert wrong.status_code == 422 and wrong.json()["detail"]["field"] == "parts", wrong.text
        assert (await step({"action": "abort", "upload_id": started["upload_id"]})).status_code == 200
        gone = await step({"action": "complete", "upload_id": started["upload_id"],
                           "parts": [{"part_number": 1, "etag": first.headers["etag"]}]})
        assert gone.status_code == 404 and "start again" in gone.text
        forged = await workload.post(route.replace(job_id, str(uuid.uuid4())), json={"action": "start", "size": 1})
        assert forged.status_code == 403

        again = (await step({"action": "start", "size": 1})).json()  # while another upload completes first
        part = await workload.put((await step({"action": "sign", "upload_id": again["upload_id"],
                                               "part_numbers": [1]})).json()["urls"]["1"], content=b"late")
        await store_from_settings(settings).put_bytes(output_key(job_id, 1), b"the output in place")
        late = await step({"action": "complete", "upload_id": again["upload_id"],
                           "parts": [{"part_number": 1, "etag": part.headers["etag"]}]})
        assert late.status_code == 409 and "already received" in late.text
        assert await store_from_settings(settings).get_bytes(output_key(job_id, 1)) == b"the output in place"
        await store_from_settings(settings).delete(output_key(job_id, 1))
    assert pending_uploads(settings, s3) == []
    assert not await store_from_settings(settings).exists(output_key(job_id, 1))


async def test_on_the_folder_the_upload_route_says_to_put_the_output_whole(migrated):
    settings = migrated.model_copy(update={"gateway_public_url": GATEWAY})
    job_id = str(uuid.uuid4())
    assert "TUNEFLEET_ARTIFACTS_PARTS_URL" not in workload_env(settings, job_id, 1, resume=False, push=True)
    route = signed_url(settings.require_secret_key(), GATEWAY, "POST", f"/api/bundles/{job_id}/1/output-upload", 60)
    async with gateway_client(settings) as client:
        answer = await client.post(route.removeprefix(GATEWAY), json={"action": "start", "size": 10})
    assert answer.status_code == 409 and "TUNEFLEET_ARTIFACTS_URL" in answer.text

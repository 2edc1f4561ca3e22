"""Both storage backends through one set of tests: the folder, and S3 over its real wire API (``rclone serve s3``
on loopback, which checks every signature, reached by boto3 over HTTP). Presigned URLs are used with plain HTTP,
as a workload would."""

from __future__ import annotations

import os

import httpx
import pytest

from shared.settings import Settings
from shared.storage import (
    MAX_PARTS,
    MIN_PART_BYTES,
    MULTIPART_BYTES,
    LocalStore,
    S3Store,
    StorageError,
    check_key,
    part_bytes,
    store_from_settings,
)

pytestmark = pytest.mark.usefixtures("s3_credentials")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, s3):
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    return S3Store(s3.new_bucket(), endpoint_url=s3.endpoint, prefix="stack-a")


async def test_files_and_bytes_round_trip_and_are_listed_and_deleted_by_prefix(store, tmp_path):
    source = tmp_path / "data.jsonl"
    source.write_bytes(b'{"text": "hello"}\n' * 100)
    await store.put_file("datasets/a.jsonl", source)
    await store.put_bytes("artifacts/job-1/attempt-1/result.json", b'{"ok": true}')
    await store.put_bytes("artifacts/job-1/attempt-2/result.json", b'{"ok": false}')
    await store.put_bytes("artifacts/job-10/attempt-1/result.json", b"{}")

    assert await store.exists("datasets/a.jsonl") and not await store.exists("datasets/b.jsonl")
    assert await store.size("datasets/a.jsonl") == source.stat().st_size
    await store.get_file("datasets/a.jsonl", tmp_path / "out" / "copy.jsonl")
    assert (tmp_path / "out" / "copy.jsonl").read_bytes() == source.read_bytes()
    assert await store.get_bytes("artifacts/job-1/attempt-2/result.json") == b'{"ok": false}'
    assert await store.keys("artifacts/job-1/") == ["artifacts/job-1/attempt-1/result.json",
                                                     "artifacts/job-1/attempt-2/result.json"]

    assert await store.delete_prefix("artifacts/job-1/") == 2
    assert await store.keys("artifacts/") == ["artifacts/job-10/attempt-1/result.json"]
    with pytest.raises(StorageError, match="no object"):
        await store.get_bytes("artifacts/job-1/attempt-1/result.json")
    with pytest.raises(StorageError, match="no object"):
        await store.get_file("nothing/here", tmp_path / "x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


@pytest.mark.parametrize("key", ["../escape", "/abs/path", "a/../../b", "a//b", "a\\b", "nul\x00", "", "./a"])
def test_a_key_that_could_leave_its_folder_is_refused(key):
    with pytest.raises(StorageError, match="not a plain relative path"):
        check_key(key)


async def test_a_large_artifact_goes_up_in_parts_and_comes_back_whole(s3, tmp_path):
    store = S3Store(s3.new_bucket(), endpoint_url=s3.endpoint)
    big = tmp_path / "adapter.tar.gz"
    with open(big, "wb") as f:
        for i in range(3):  # 2.5 parts: 16 MiB, 16 MiB and the rest
            f.write(os.urandom(MULTIPART_BYTES if i < 2 else MULTIPART_BYTES // 2))
    parts: list[int] = []
    store.client.meta.events.register("before-call.s3.UploadPart", lambda params, **_: parts.append(1))
    await store.put_file("artifacts/j/attempt-1.tar.gz", big)
    assert len(parts) == 3  # CreateMultipartUpload, three UploadPart calls, CompleteMultipartUpload
    await store.get_file("artifacts/j/attempt-1.tar.gz", tmp_path / "back.tar.gz")
    assert (tmp_path / "back.tar.gz").read_bytes() == big.read_bytes()


async def test_presigned_urls_let_a_workload_upload_and_download_without_credentials(s3):
    store = S3Store(s3.new_bucket(), endpoint_url=s3.endpoint)
    put = store.presign_put("checkpoints/j/step-10.tar.gz", 600)
    get = store.presign_get("checkpoints/j/step-10.tar.gz", 600)
    assert "X-Amz-Signature=" in put and "X-Amz-Signature=" in get
    async with httpx.AsyncClient(timeout=30) as plain:  # no credentials: the URL is the permission, checked by S3
        assert (await plain.put(put, content=b"checkpoint bytes")).status_code == 200
        answer = await plain.get(get)
        assert answer.status_code == 200 and answer.content == b"checkpoint bytes"
        # the signature covers the key: the same URL for another key is refused by the storage
        tampered = await plain.get(get.replace("step-10", "step-20"))
        assert tampered.status_code == 403 and "SignatureDoesNotMatch" in tampered.text
    assert await store.get_bytes("checkpoints/j/step-10.tar.gz") == b"checkpoint bytes"


def test_the_local_store_signs_nothing_and_the_backend_follows_the_settings(tmp_path, s3):
    local = store_from_settings(Settings(home=tmp_path))
    assert isinstance(local, LocalStore) and local.root == tmp_path / "objects"
    assert local.presign_get("a", 60) is None and local.presign_put("a", 60) is None and not local.signs_urls
    with pytest.raises(RuntimeError, match="TUNEFLEET_S3_BUCKET"):
        store_from_settings(Settings(home=tmp_path, storage_backend="s3"))
    remote = store_from_settings(Settings(home=tmp_path, storage_backend="s3", s3_bucket="b",
                                      s3_endpoint_url=s3.endpoint, s3_prefix="team"))
    assert isinstance(remote, S3Store) and remote.bucket == "b" and remote._key("x/y") == "team/x/y"


@pytest.mark.parametrize(("size", "wanted", "expected"), [
    (12 * 2**20, 64 * 2**20, 64 * 2**20),     # the setting
    (12 * 2**20, 2**20, MIN_PART_BYTES),       # never under S3's minimum part
    (2**40, 64 * 2**20, 2**40 // MAX_PARTS + 1),  # 1 TiB: larger parts, so 10,000 of them hold it
])
def test_a_multipart_uploads_parts_respect_s3s_limits(size, wanted, expected):
    chosen = part_bytes(size, wanted)
    assert chosen == expected and -(-size // chosen) <= MAX_PARTS

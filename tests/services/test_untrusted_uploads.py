"""Bodies from people without a key, and archives from workloads, are not trusted with the disk or memory."""

from __future__ import annotations

import asyncio
import io
import tarfile
import uuid
from pathlib import Path

import pytest
import uvicorn

from services.cli.embedded import free_port
from services.cloud.archives import extract_tar_gz
from services.cloud.bundles import artifacts_dir
from services.gateway.app import create_app
from shared.errors import PayloadTooLarge, ValidationFailed
from shared.signing import signed_url

from .conftest import gateway_client


async def _raw_request(port: int, head: bytes) -> bytes:
    """Send a request head and the first bytes of a huge body; return the status line the server answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.jsonl\"\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 20)
    finally:
        writer.close()


async def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(migrated):
    """H3: 10 GB announced, a few bytes sent: the 401 comes at once instead of the gateway waiting to spool it."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(migrated), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        for authorization in (b"", b"Authorization: Bearer tf_not_a_key\r\n"):
            head = (b"POST /api/training/datasets HTTP/1.1\r\nHost: gateway\r\n" + authorization +
                    b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000000\r\n\r\n")
            assert (await _raw_request(port, head)).startswith(b"HTTP/1.1 401"), authorization
    finally:
        server.should_exit = True
        await task


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _url(settings, job_id: str, what: str) -> str:
    return signed_url(settings.require_secret_key(), "http://gateway", "PUT", f"/api/bundles/{job_id}/1/{what}",
                      600).removeprefix("http://gateway")


async def test_artifacts_take_plain_files_only_and_stop_at_the_decompressed_cap(migrated, tmp_path):
    settings = migrated.model_copy(update={"max_artifacts_gb": 1 / 1024})  # 1 MiB
    job_id = str(uuid.uuid4())
    folder = artifacts_dir(settings, job_id, 1)
    bomb = _tar_gz([_file("adapter/weights.bin", b"\0" * (20 * 2**20))])  # 20 MiB of zeros, about 20 KiB packed
    assert len(bomb) < 100_000
    cases = [
        (bomb, 413, "decompressed"),
        (_tar_gz([_file("result.json", b"{}"), _special("passwd", tarfile.SYMTYPE, "/etc/passwd")]), 422, "a link"),
        (_tar_gz([_file("a", b"x"), _special("b", tarfile.LNKTYPE, "/etc/passwd")]), 422, "a link"),
        (_tar_gz([_file("../escape.txt", b"x")]), 422, "plain relative name"),
        (_tar_gz([_file("/etc/cron.d/x", b"x")]), 422, "plain relative name"),
        (_tar_gz([_special("fifo", tarfile.FIFOTYPE)]), 422, "not a plain file"),
        (b"not a tar.gz", 422, "tar.gz"),
    ]
    async with gateway_client(settings) as client:
        for body, status, words in cases:
            r = await client.put(_url(settings, job_id, "artifacts"), content=body)
            assert r.status_code == status and words in r.text, (words, r.status_code, r.text)
            assert not folder.exists()
            assert not list(folder.parent.glob(".incoming-*")) and not list(folder.parent.glob(".upload-*"))
        assert not (tmp_path / "escape.txt").exists() and not (settings.home / "artifacts" / "escape.txt").exists()
        good = _tar_gz([_file("adapter/adapter_config.json", b"{}"), _file("result.json", b'{"status": "x"}')])
        r = await client.put(_url(settings, job_id, "artifacts"), content=good)
        assert r.status_code == 204, r.text
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
            "adapter", "adapter/adapter_config.json", "result.json"]
        r = await client.put(_url(settings, job_id, "heartbeat"), content=b"x" * (200 * 1024))
        assert r.status_code == 413, r.text
        r = await client.put(_url(settings, job_id, "artifacts"), content=good)
        assert r.status_code == 409  # the output is in: the long-lived link cannot rewrite what was registered


def test_member_count_is_capped(tmp_path: Path):
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(_tar_gz([_file(f"f{i}", b"") for i in range(6)]))
    with pytest.raises(PayloadTooLarge, match="more than 5 members"):
        extract_tar_gz(archive, tmp_path / "out", max_bytes=10, max_members=5)
    assert not (tmp_path / "out").exists()
    extract_tar_gz(archive, tmp_path / "out", max_bytes=10, max_members=6)
    assert len(list((tmp_path / "out").iterdir())) == 6
    with pytest.raises(ValidationFailed, match=r"tar\.gz"):
        extract_tar_gz(tmp_path / "missing.tar.gz", tmp_path / "other", max_bytes=10, max_members=10)


def test_a_huge_tar_header_is_refused_before_it_is_read_into_memory(tmp_path: Path):
    """tarfile reads a pax header whole: 80 MiB of it packs into well under 1 MiB."""
    info = tarfile.TarInfo("adapter_config.json")
    info.pax_headers = {"comment": "x" * (80 * 2**20)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    archive = tmp_path / "header-bomb.tar.gz"
    archive.write_bytes(buffer.getvalue())
    assert archive.stat().st_size < 2**20
    with pytest.raises(PayloadTooLarge, match="decompressed"):
        extract_tar_gz(archive, tmp_path / "out", max_bytes=2**20, max_members=10)
    assert not (tmp_path / "out").exists()

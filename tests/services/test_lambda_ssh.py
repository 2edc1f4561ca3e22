"""The Lambda provider's SSH and SFTP layer against a real SSH server on loopback (asyncssh), including one that
lies: host keys are pinned at first contact, every failure is a provider error, and the output download takes
only plain files with plain names, up to a cap."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import asyncssh
import pytest

from services.cli.embedded import free_port
from services.provider_lambda.ssh import HostKeyChanged, Session, derive_key
from shared.errors import ProviderError, ProviderTransient

SECRET = "test-secret-key-0123456789-abcdefghij"
NAME = "tunefleet-job-1"


class LyingSFTP(asyncssh.SFTPServer):
    """Lists, beside the real files, names that a compromised machine might report."""

    async def scandir(self, path: bytes):
        async for entry in super().scandir(path):
            yield entry
        if path.rstrip(b"/").endswith(b"output"):
            attrs = asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_REGULAR, size=4, permissions=stat.S_IFREG | 0o644)
            for bogus in (b"../escape", b"adapter/../../x", b"a\\b"):
                yield asyncssh.SFTPName(bogus, b"", attrs)


class SSHServer:
    """A real sshd on its own event loop thread, accepting the workload key of ``NAME`` as ``ubuntu``."""

    def __init__(self, home: Path, port: int, host_key: asyncssh.SSHKey):
        self.home, self.port, self.host_key = home, port, host_key
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        _, public = derive_key(SECRET, NAME)
        self.client_key = asyncssh.import_authorized_keys(public)

    def __enter__(self) -> SSHServer:
        async def listen():
            return await asyncssh.listen(
                "127.0.0.1", self.port, server_host_keys=[self.host_key], authorized_client_keys=self.client_key,
                sftp_factory=lambda chan: LyingSFTP(chan, chroot=str(self.home).encode()), allow_scp=False)

        self.thread.start()
        self.acceptor = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            self.acceptor.close()
            await self.acceptor.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def home(tmp_path) -> Path:
    output = tmp_path / "home" / "tunefleet-job" / "output"
    (output / "adapter").mkdir(parents=True)
    (output / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 1000)
    (output / "metadata.json").write_text("{}")
    (output / "result.json").write_text('{"status": "completed"}')
    (output / "checkpoints").mkdir()
    (output / "checkpoints" / "big.bin").write_bytes(b"c" * 5000)
    os.symlink("/etc/passwd", output / "passwd")
    os.symlink("/etc", output / "etc")
    return tmp_path / "home"


def connect(port: int, pinned=None) -> Session:
    key, _ = derive_key(SECRET, NAME)
    return Session("127.0.0.1", port, key, pinned=pinned, timeout=5)


def test_the_host_key_is_pinned_at_first_contact_and_a_changed_one_is_refused(home):
    port = free_port()
    first = asyncssh.generate_private_key("ssh-ed25519")
    with SSHServer(home, port, first):
        with connect(port) as session:
            pinned = session.seen_host_key
            assert session.exists("tunefleet-job/output/result.json")
        assert pinned.key_type == "ssh-ed25519"
        assert pinned.key_base64 == first.export_public_key("openssh").split()[1].decode()
        with connect(port, pinned) as session:  # the pinned key matches: no new key is offered for pinning
            assert session.seen_host_key is None
    another_machine = SSHServer(home, port, asyncssh.generate_private_key("ssh-ed25519"))  # at that address
    with another_machine, pytest.raises(HostKeyChanged, match="host key changed"):
        connect(port, pinned)


def test_a_closed_port_and_a_wrong_key_are_transient_provider_errors(home):
    port = free_port()
    with pytest.raises(ProviderTransient, match=r"SSH to 127\.0\.0\.1"):
        connect(port)
    with SSHServer(home, port, asyncssh.generate_private_key("ssh-ed25519")):
        stranger, _ = derive_key(SECRET, "tunefleet-other-1")
        with pytest.raises(ProviderTransient, match="authentication refused"):
            Session("127.0.0.1", port, stranger, pinned=None, timeout=5)


def test_the_output_download_takes_plain_files_only_and_stops_at_its_cap(home, tmp_path):
    port = free_port()
    target = tmp_path / "artifacts"
    with SSHServer(home, port, asyncssh.generate_private_key("ssh-ed25519")), connect(port) as session:
        refused = session.download_output("tunefleet-job/output", target, skip=frozenset({"checkpoints"}),
                                          last="result.json", max_bytes=10_000)
        with pytest.raises(ProviderError, match="over the size or file count cap"):
            session.download_output("tunefleet-job/output", tmp_path / "capped", skip=frozenset(),
                                    last="result.json", max_bytes=2_000)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [
        "adapter", "adapter/adapter_model.safetensors", "metadata.json", "result.json"]
    assert all(not p.is_symlink() for p in target.rglob("*"))
    assert not (tmp_path / "escape").exists()
    assert sorted(r.split(": ", 1)[1] for r in refused) == [
        "a symlink", "a symlink", "not a plain name", "not a plain name", "not a plain name"]


def test_the_machines_whole_log_is_brought_as_it_grows(home, tmp_path):
    """Each collect brings the bytes of the machine's log that the server's copy lacks, for the runner to publish
    line by line: nothing twice, nothing skipped."""
    from services.cloud.joblog import LOG
    from services.provider_lambda.compute import LambdaCompute
    from shared.providers import WorkloadRequest

    remote = home / "tunefleet-job" / "output" / LOG
    remote.write_bytes(b"[bootstrap] installing\n")
    request = WorkloadRequest(job_id="j", attempt=1, installation="i", env={}, bundle_dir=tmp_path / "bundle",
                              artifacts_dir=tmp_path / "artifacts")
    port = free_port()
    with SSHServer(home, port, asyncssh.generate_private_key("ssh-ed25519")):
        LambdaCompute._collect_over_ssh(connect(port), request, 10_000)
        assert (request.artifacts_dir / LOG).read_bytes() == remote.read_bytes()
        with remote.open("ab") as f:
            f.write(b"step 1 loss 2.0\nstep 2 lo")
        LambdaCompute._collect_over_ssh(connect(port), request, 10_000)
        LambdaCompute._collect_over_ssh(connect(port), request, 10_000)  # nothing new: nothing added
        with connect(port) as session:
            assert session.read_range(f"tunefleet-job/output/{LOG}", 23, 4) == b"step"
            assert session.read_range(f"tunefleet-job/output/{LOG}", 10_000, 4) == b""
            assert session.read_range("tunefleet-job/output/passwd", 0, 4) == b""  # a link: never followed
    assert (request.artifacts_dir / LOG).read_bytes() == remote.read_bytes()

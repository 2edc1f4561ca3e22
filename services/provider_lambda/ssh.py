"""SSH and SFTP to an instance with paramiko. Each workload's key is derived from the service's secret and
the resource name, so nothing needs storing and a restarted service can still reach its instances."""

from __future__ import annotations

import hashlib
import hmac
import io
import posixpath
import stat
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

JOB_DIR = "tunefleet-job"
#: Fixed text: the job's configuration travels as files (spec.json), never spliced into this command.
START_COMMAND = (
    f"cd ~/{JOB_DIR} && touch started && "
    "(setsid nohup bash -c 'python3 -m trainer --spec spec.json > train.log 2>&1; echo $? > exit_code.tmp; "
    "mv exit_code.tmp exit_code' < /dev/null > /dev/null 2>&1 &)"
)


def derive_key(secret_key: str, name: str) -> tuple[paramiko.Ed25519Key, str]:
    """(private key for paramiko, OpenSSH public key) for the resource ``name``."""
    seed = hmac.new(secret_key.encode(), f"tunefleet-ssh:{name}".encode(), hashlib.sha256).digest()
    private = Ed25519PrivateKey.from_private_bytes(seed)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), f"{public} {name}"


class Session:
    """One SSH connection to an instance; use as a context manager. Blocking: call from a thread."""

    def __init__(self, host: str, port: int, key: paramiko.PKey, user: str = "ubuntu", timeout: float = 20.0):
        self.client = paramiko.SSHClient()
        # Lambda's API publishes no host keys; the first key seen for a fresh instance is trusted.
        self.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        self.client.connect(host, port=port, username=user, pkey=key, timeout=timeout, banner_timeout=timeout,
                            auth_timeout=timeout, look_for_keys=False, allow_agent=False)
        self.sftp = self.client.open_sftp()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.sftp.close()
        self.client.close()

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
        code = stdout.channel.recv_exit_status()
        return code, stdout.read().decode(errors="replace") + stderr.read().decode(errors="replace")

    def exists(self, path: str) -> bool:
        try:
            self.sftp.stat(path)
        except FileNotFoundError:
            return False
        return True

    def read(self, path: str, tail_bytes: int | None = None) -> bytes:
        with self.sftp.open(path, "rb") as f:
            if tail_bytes is not None:
                size = f.stat().st_size
                f.seek(max(0, size - tail_bytes))
            return f.read()

    def upload_folder(self, local: Path, remote: str) -> None:
        self.mkdirs(remote)
        for path in sorted(local.iterdir()):
            if path.is_file():
                self.sftp.put(str(path), posixpath.join(remote, path.name))

    def download_folder(self, remote: str, local: Path, *, skip: frozenset[str] = frozenset()) -> None:
        local.mkdir(parents=True, exist_ok=True)
        for entry in self.sftp.listdir_attr(remote):
            if entry.filename in skip:
                continue
            source, target = posixpath.join(remote, entry.filename), local / entry.filename
            if stat.S_ISDIR(entry.st_mode or 0):
                self.download_folder(source, target, skip=skip)
            else:
                self.sftp.get(source, str(target))

    def mkdirs(self, remote: str) -> None:
        built = ""
        for part in remote.split("/"):
            built = posixpath.join(built, part) if built else part
            if part and not self.exists(built):
                self.sftp.mkdir(built)

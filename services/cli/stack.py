"""``tunefleet up``: infrastructure (embedded unless pointed elsewhere), migrations, then every service
as its own process; stopped in reverse order on SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import SecretStr

from shared import subjects
from shared.db import apply_migrations, create_pool
from shared.sealing import generate_keypair
from shared.settings import Settings

from .embedded import EmbeddedNats, EmbeddedPostgres, free_port, owner_only_secret, wait_for_port
from .supervisor import Supervisor

log = logging.getLogger(__name__)

OWNERS = ("gateway", "scheduler", "provider_local", "provider_runpod", "provider_lambda", "provider_kaggle",
          "provider_hfspaces", "metrics_ingest", "model_registry", "notifier")
#: The gateway stops taking work first; the provider stops its trainers while ingest still takes their
#: last metrics and the scheduler can still read its reports later from the stream; the notifier after the
#: scheduler, so that it has queued the last status changes (what it has queued it sends after a restart).
STOP_ORDER = ("gateway", "provider_local", "provider_runpod", "provider_lambda", "provider_kaggle",
              "provider_hfspaces", "scheduler", "model_registry", "notifier", "metrics_ingest")


def secret_key(home: Path) -> str:
    """The data folder's secret key, made on first use and readable by its owner only."""
    return owner_only_secret(home / "secret_key", 48)


async def migrate_all(database_url: str) -> None:
    pool = await create_pool(database_url)
    try:
        await apply_migrations(pool, *OWNERS)
    finally:
        await pool.close()


def secrets_keypair(home: Path) -> tuple[str, str]:
    """The data folder's keypair for provider credentials: (public, private), made on first use."""
    public_path, private_path = home / "secrets_key.pub", home / "secrets_key"
    if not private_path.exists():
        public, private = generate_keypair()
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private)
        public_path.write_text(public)
    return public_path.read_text().strip(), private_path.read_text().strip()


@dataclass
class Stack:
    settings: Settings
    nats: EmbeddedNats | None = None
    postgres: EmbeddedPostgres | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    sealing_keys: tuple[str, str] = ("", "")
    sandbox: bool = False
    sandbox_key: str | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"

    def start_infrastructure(self) -> None:
        # What the stack and its services write is theirs alone unless they say otherwise (a trainer's uid is
        # handed its own files): bundles, logs, downloaded outputs, the emulated clouds' folders.
        os.umask(0o077)
        home = self.settings.home
        home.mkdir(parents=True, exist_ok=True)
        nats_url = self.settings.nats_url
        if not nats_url:
            port = os.environ.get("TUNEFLEET_NATS_PORT")
            self.nats = EmbeddedNats(home / "nats", port=int(port) if port else None).start()
            nats_url = self.nats.url
        database_url = self.settings.database_url
        if not database_url:
            self.postgres = EmbeddedPostgres(home / "postgres").start()
            database_url = self.postgres.url
        key = self.settings.secret_key.get_secret_value() if self.settings.secret_key else secret_key(home)
        if self.settings.secrets_private_key:
            self.sealing_keys = (self.settings.secrets_public_key or "",
                                 self.settings.secrets_private_key.get_secret_value())
        else:
            self.sealing_keys = secrets_keypair(home)
        self.env = {**os.environ, "TUNEFLEET_HOME": str(home), "TUNEFLEET_NATS_URL": nats_url,
                    "TUNEFLEET_DATABASE_URL": database_url, "TUNEFLEET_SECRET_KEY": key,
                    "TUNEFLEET_SECRETS_PUBLIC_KEY": self.sealing_keys[0],
                    "TUNEFLEET_GATEWAY_PORT": str(self.settings.gateway_port),
                    "TUNEFLEET_INGEST_PORT": str(self.settings.ingest_port)}
        self.settings = self.settings.model_copy(update={
            "nats_url": nats_url, "database_url": database_url, "secret_key": SecretStr(key),
            "secrets_public_key": self.sealing_keys[0]})

    async def migrate(self) -> None:
        await migrate_all(self.settings.require_database_url())

    def start_sandbox(self) -> None:
        """Cloud emulators on loopback, so the whole flow runs with no cloud account."""
        from services.sandbox import accounts
        from services.sandbox.machines import build_stock_images

        folder = self.settings.home / "sandbox"
        folder.mkdir(parents=True, exist_ok=True)
        key_file = accounts.key_file(self.settings.home)
        self.sandbox_key = accounts.account_key(key_file, "admin")
        log.info("preparing the emulated machine images (once per data folder; about a minute)")
        stock = build_stock_images(folder / "images")
        runpod, lambda_api, lambda_ssh, mirror = free_port(), free_port(), free_port(), free_port()
        kaggle, hub = free_port(), free_port()
        with open(self.settings.home / "logs" / "sandbox.log", "ab") as logfile:
            self.processes["sandbox"] = subprocess.Popen(
                [sys.executable, "-m", "services.sandbox", "--workdir", str(folder), "--key-file", str(key_file),
                 "--runpod-port", str(runpod), "--lambda-port", str(lambda_api), "--lambda-ssh-port", str(lambda_ssh),
                 "--mirror-port", str(mirror), "--kaggle-port", str(kaggle), "--hf-port", str(hub)],
                env=self.env, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        for port in (runpod, lambda_api, mirror, kaggle, hub):
            wait_for_port(port, timeout=120)
        self.env.update({"RUNPOD_API_BASE_URL": f"http://127.0.0.1:{runpod}",
                         "LAMBDA_API_BASE_URL": f"http://127.0.0.1:{lambda_api}/api/v1",
                         "TUNEFLEET_LAMBDA_SSH_PORT": str(lambda_ssh), "TUNEFLEET_SANDBOX": "true",
                         "KAGGLE_API_BASE_URL": f"http://127.0.0.1:{kaggle}", "HF_ENDPOINT": f"http://127.0.0.1:{hub}",
                         "HF_HUB_DISABLE_XET": "1",  # the Hub emulator serves LFS uploads, not Xet storage
                         "TUNEFLEET_WORKLOAD_PYTHON_URL": f"http://127.0.0.1:{mirror}/files/{stock.python_archive.name}",
                         "TUNEFLEET_WORKLOAD_PYTHON_SHA256": stock.python_sha256})

    def start_services(self) -> None:
        logs = self.settings.home / "logs"
        logs.mkdir(exist_ok=True)
        if self.sandbox:
            self.start_sandbox()
        for service in subjects.SERVICES:
            self.processes[service] = self.spawn(service)

    def spawn(self, service: str) -> subprocess.Popen:
        """Start one service (or the embedded NATS or PostgreSQL) as its own process, its output appended to its
        log."""
        if service == "nats" and self.nats is not None:
            return self.nats.spawn()
        if service == "postgres" and self.postgres is not None:
            return self.postgres.spawn()
        env = {k: v for k, v in self.env.items() if k != "TUNEFLEET_SECRETS_PRIVATE_KEY"}
        if service.startswith("provider_"):
            env["TUNEFLEET_SECRETS_PRIVATE_KEY"] = self.sealing_keys[1]
        with open(self.settings.home / "logs" / f"{service}.log", "ab") as logfile:
            return subprocess.Popen([sys.executable, "-m", f"services.{service}"], env=env, stdout=logfile,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def supervise_until_signal(self, every_s: float = 1.0) -> None:
        """Block until SIGINT or SIGTERM, restarting services that exit meanwhile (``supervisor``)."""
        stopping = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda _s, _f: stopping.set())
        watched = {n: p for n, p in self.processes.items() if n != "sandbox"}
        for name, server in (("nats", self.nats), ("postgres", self.postgres)):
            if server is not None:
                watched[name] = server.process
        supervisor = Supervisor(self.settings.home, watched, self.spawn)
        while not stopping.wait(every_s):
            supervisor.check()
            self.processes.update({n: p for n, p in supervisor.processes.items() if n not in ("nats", "postgres")})

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last = "not reachable"
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"service {name} exited with code {proc.returncode}; see "
                                       f"{self.settings.home / 'logs' / (name + '.log')}")
            try:
                r = httpx.get(f"{self.gateway_url}/healthz", timeout=2)
                if r.status_code == 200:
                    return
                last = f"waiting for {', '.join(r.json()['not_ready'])}"
            except httpx.HTTPError:
                last = "the gateway does not answer yet"
            time.sleep(0.25)
        raise TimeoutError(f"the stack was not ready after {timeout:.0f}s ({last})")

    def up(self) -> None:
        self.start_infrastructure()
        asyncio.run(self.migrate())
        self.start_services()
        self.wait_ready()

    def stop(self, timeout: float = 30.0) -> None:
        """Gateway first (no new work), the provider before the scheduler (its last reports are stored)."""
        for service in (*STOP_ORDER, "sandbox"):
            proc = self.processes.get(service)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", service, timeout)
                proc.kill()
                proc.wait()
        self.processes.clear()
        if self.postgres:
            self.postgres.stop()
        if self.nats:
            self.nats.stop()

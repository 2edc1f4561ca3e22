"""A TuneFleet stack as processes (``tunefleet up``), driven through HTTP: shared by the end-to-end and chaos
suites."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from services.cli.embedded import EmbeddedNats, free_port
from services.cli.sse import iter_events

TERMINAL = {"completed", "failed", "stopped", "budget_exceeded"}


class RunningStack:
    def __init__(self, home: Path, extra_env: dict[str, str] | None = None):
        self.home = home
        self.gateway_port, self.ingest_port, self.nats_port = free_port(), free_port(), free_port()
        self.env = {**os.environ, "TUNEFLEET_HOME": str(home), "TUNEFLEET_GATEWAY_PORT": str(self.gateway_port),
                    "TUNEFLEET_INGEST_PORT": str(self.ingest_port), "TUNEFLEET_NATS_PORT": str(self.nats_port),
                    **(extra_env or {})}
        for name in ("TUNEFLEET_NATS_URL", "TUNEFLEET_DATABASE_URL", "TUNEFLEET_SECRET_KEY"):
            self.env.pop(name, None)
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        self.process: subprocess.Popen | None = None

    @property
    def nats_url(self) -> str:
        """The stack's embedded NATS, with the password from its data folder."""
        return EmbeddedNats(self.home / "nats", self.nats_port).url

    def cli(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=self.env, check=True,
                              capture_output=True, text=True, timeout=120).stdout

    def start(self) -> None:
        self.output = open(self.home.parent / "up.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", "services.cli.main", "up"], env=self.env,
                                        stdout=self.output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_ready(120)

    def wait_ready(self, timeout: float) -> None:
        """Until ``/healthz`` answers 200 (every service ready), while ``tunefleet up`` runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.home.parent / "up.log").read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"stack not ready in {timeout:.0f} s")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(90)
        self.output.close()
        return code


def wait_for_status(client: httpx.Client, job_id: str, wanted: set[str], timeout: float = 400) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/training/jobs/{job_id}").json()
        if job["status"] in wanted:
            return job
        assert job["status"] not in TERMINAL, job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never reached {wanted}: {job}")


def collect_events(client: httpx.Client, job_id: str, into: list) -> threading.Thread:
    def run():
        with client.stream("GET", f"/api/training/jobs/{job_id}/events", timeout=None) as response:
            for event in iter_events(response):
                into.append(event)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread

"""The stack as processes (``tunefleet up``), shared by the end-to-end tests of a session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from services.cli.embedded import free_port
from services.cli.sse import iter_events
from services.sandbox.images import sandbox_images
from services.sandbox.lambda_cloud import LambdaEmulator
from services.sandbox.machines import StockImages, build_stock_images
from services.sandbox.mirror import mirror_app, python_url
from services.sandbox.runpod import RunPodEmulator

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

    def cli(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=self.env, check=True,
                              capture_output=True, text=True, timeout=120).stdout

    def start(self) -> None:
        self.output = open(self.home.parent / "up.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", "services.cli.main", "up"], env=self.env,
                                        stdout=self.output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.home.parent / "up.log").read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("stack not ready in 120 s")

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


class EmulatorServer:
    """A cloud emulator served by uvicorn on a thread of the test process, so tests can inject faults."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> EmulatorServer:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


RUNPOD_KEY = "rp-e2e-key-0123456789"
LAMBDA_KEY = "lambda-e2e-key-0123456789"
#: Stack-wide timers, scaled down: provisioning may last this long before the resource is replaced.
PROVISIONING_TIMEOUT_S = 15.0


@pytest.fixture(scope="session")
def stock_images() -> StockImages:
    """The emulated clouds' stock machine images, built once and kept between sessions of this machine."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunefleet" / "sandbox-images"
    return build_stock_images(cache)


@pytest.fixture(scope="session")
def mirror(stock_images) -> str:
    """"The internet" of the emulated machines: the CPython archive a Python 3.10 machine downloads."""
    with EmulatorServer(mirror_app(stock_images)) as server:
        yield python_url(server.url, stock_images)


@pytest.fixture(scope="session")
def runpod(tmp_path_factory, stock_images) -> RunPodEmulator:
    emulator = RunPodEmulator(tmp_path_factory.mktemp("runpod"), {RUNPOD_KEY}, stock=stock_images,
                              images=sandbox_images(stock_images))
    with EmulatorServer(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture(scope="session")
def lambda_cloud(tmp_path_factory, stock_images) -> LambdaEmulator:
    emulator = LambdaEmulator(tmp_path_factory.mktemp("lambda"), {LAMBDA_KEY}, stock=stock_images,
                              boot_delay_s=0.5, sshd_delay_s=2.0, ssh_port=free_port())
    with EmulatorServer(emulator.app) as server:
        emulator.url = f"{server.url}/api/v1"
        yield emulator


@pytest.fixture(scope="session")
def stack(tmp_path_factory, tiny_model_dir, runpod, lambda_cloud, mirror, stock_images):
    s = RunningStack(tmp_path_factory.mktemp("e2e") / "home", {
        "RUNPOD_API_BASE_URL": runpod.url, "LAMBDA_API_BASE_URL": lambda_cloud.url,
        "TUNEFLEET_LAMBDA_SSH_PORT": str(lambda_cloud.ssh_port), "TUNEFLEET_CLOUD_POLL_INTERVAL_S": "0.5",
        "TUNEFLEET_PROVISIONING_TIMEOUT_S": str(PROVISIONING_TIMEOUT_S), "TUNEFLEET_SANDBOX": "true",
        # The operator's model folder: the tests' tiny models are built under pytest's temporary folder.
        "TUNEFLEET_MODEL_DIRS": str(tmp_path_factory.getbasetemp()),
        "TUNEFLEET_WORKLOAD_PYTHON_URL": mirror, "TUNEFLEET_WORKLOAD_PYTHON_SHA256": stock_images.python_sha256})
    s.start()
    yield s
    if s.process and s.process.poll() is None:
        s.stop()


@pytest.fixture(scope="session")
def alice(stack: RunningStack) -> httpx.Client:
    key = stack.cli("keys", "create", "--user", "alice").strip()
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield client

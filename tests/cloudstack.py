"""The stack as processes (``tunefleet up``) beside emulated RunPod and Lambda clouds: one per session, shared by the
end-to-end and contract suites (``tests/conftest.py`` registers these fixtures; ``tests/e2e/conftest.py`` gives
their tests the helpers)."""

from __future__ import annotations

import email
import email.policy
import os
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
import uvicorn

from services.cli.embedded import free_port
from services.sandbox.images import sandbox_images
from services.sandbox.lambda_cloud import LambdaEmulator
from services.sandbox.machines import StockImages, build_stock_images
from services.sandbox.mirror import mirror_app, python_url
from services.sandbox.runpod import RunPodEmulator
from tests.stack import TERMINAL, RunningStack, collect_events, wait_for_status

__all__ = ["HF_TOKEN", "HF_USER", "KAGGLE_KEY", "KAGGLE_USER", "LAMBDA_KEY", "PROVISIONING_TIMEOUT_S", "RUNPOD_KEY",
           "TERMINAL", "EmulatorServer", "Mailbox", "RunningStack", "collect_events", "wait_for_status"]


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


class Mailbox:
    """A real SMTP server (aiosmtpd) on loopback that keeps every message it is sent."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[EmailMessage] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd calls its handler hook so
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(message)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in list(self.messages) if address in m["X-Envelope-To"]]


RUNPOD_KEY = "rp-e2e-key-0123456789"
LAMBDA_KEY = "lambda-e2e-key-0123456789"
#: alice's accounts on the emulated Kaggle and Hugging Face Hub (a Kaggle key also serves as her API token).
KAGGLE_USER, KAGGLE_KEY = "alice-kaggle", "kaggle-e2e-key-0123456789"
HF_USER, HF_TOKEN = "alice-hf", "hf_e2e_token_0123456789"
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
def kaggle_cloud(tmp_path_factory, stock_images):
    from services.sandbox.kaggle import KaggleEmulator

    emulator = KaggleEmulator(tmp_path_factory.mktemp("kaggle"), {KAGGLE_USER: KAGGLE_KEY}, stock=stock_images,
                              queue_s=1.0)
    with EmulatorServer(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture(scope="session")
def hf_hub(tmp_path_factory, stock_images):
    from services.sandbox.hf_hub import HubEmulator

    emulator = HubEmulator(tmp_path_factory.mktemp("hf"), {HF_USER: HF_TOKEN}, stock=stock_images, build_s=1.0)
    with EmulatorServer(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture(scope="session")
def ollama(tmp_path_factory) -> EmulatorServer:
    """The Ollama emulator: blobs, create with Ollama's checks, and generation from the uploaded weights."""
    from services.sandbox.ollama import create_app

    with EmulatorServer(create_app(tmp_path_factory.mktemp("ollama"))) as server:
        yield server


def vllm_python() -> str | None:
    """The vLLM environment scripts/install makes (or the one TUNEFLEET_VLLM_PYTHON names)."""
    python = os.environ.get("TUNEFLEET_VLLM_PYTHON") or str(Path(__file__).parents[1] / ".serving/vllm/bin/python")
    return python if Path(python).exists() else None


@pytest.fixture(scope="session")
def mailbox() -> Mailbox:
    box = Mailbox()
    box.controller.start()
    yield box
    box.controller.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, tiny_model_dir, runpod, lambda_cloud, kaggle_cloud, hf_hub, mirror, stock_images, mailbox,
          ollama):
    s = RunningStack(tmp_path_factory.mktemp("e2e") / "home", {
        # Job emails go to the test's SMTP server; webhooks to receivers on loopback, which the operator allows.
        "TUNEFLEET_SMTP_HOST": "127.0.0.1", "TUNEFLEET_SMTP_PORT": str(mailbox.port), "TUNEFLEET_SMTP_TLS": "none",
        "TUNEFLEET_ALLOW_PRIVATE_URLS": "true", "TUNEFLEET_WEBHOOK_RETRY_BASE_S": "0.5",
        "RUNPOD_API_BASE_URL": runpod.url, "LAMBDA_API_BASE_URL": lambda_cloud.url,
        # The Hub emulator serves LFS uploads, not Xet storage (hf_xet is installed, and would be used).
        "KAGGLE_API_BASE_URL": kaggle_cloud.url, "HF_ENDPOINT": hf_hub.url, "HF_HUB_DISABLE_XET": "1",
        "TUNEFLEET_LAMBDA_SSH_PORT": str(lambda_cloud.ssh_port), "TUNEFLEET_CLOUD_POLL_INTERVAL_S": "0.5",
        "TUNEFLEET_PROVISIONING_TIMEOUT_S": str(PROVISIONING_TIMEOUT_S), "TUNEFLEET_SANDBOX": "true",
        # The operator's model folder: the tests' tiny models are built under pytest's temporary folder.
        "TUNEFLEET_MODEL_DIRS": str(tmp_path_factory.getbasetemp()),
        # and its data folder: configurations in the specification's shape name their data by data.train_path.
        "TUNEFLEET_DATA_DIRS": str(tmp_path_factory.getbasetemp() / "data-dir"),
        "TUNEFLEET_WORKLOAD_PYTHON_URL": mirror, "TUNEFLEET_WORKLOAD_PYTHON_SHA256": stock_images.python_sha256,
        # Serving: the Ollama emulator, and vLLM where scripts/install made its environment.
        "TUNEFLEET_OLLAMA_URL": ollama.url, **({"TUNEFLEET_VLLM_PYTHON": vllm_python()} if vllm_python() else {})})
    s.start()
    yield s
    if s.process and s.process.poll() is None:
        s.stop()


@pytest.fixture(scope="session")
def alice(stack: RunningStack) -> httpx.Client:
    key = stack.cli("keys", "create", "--user", "alice").strip()
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield client

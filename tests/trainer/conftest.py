"""Trainer fixtures: a tiny local model (built once per session) and a local HTTP collector for metric batches."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


class JsonServer:
    """A small JSON-over-HTTP server on a thread of the test process; subclasses answer each POST."""

    path_prefix = ""

    def __init__(self):
        self.lock = threading.Lock()
        self.hosts: list[str | None] = []  # the Host header of each request
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{self.path_prefix}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str, authorization: str | None, body: dict) -> tuple[int, dict, dict]:
        """(status, headers, JSON answer) for one POST."""
        raise NotImplementedError

    def _handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                owner.hosts.append(self.headers.get("Host"))
                status, headers, answer = owner.answer(self.path, self.headers.get("Authorization"), body)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        return Handler

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Collector(JsonServer):
    """Records POSTed batches, deduplicated by batch_id, like metrics_ingest does.

    ``script`` holds statuses (or ``(status, headers)``) answered to the first requests, in order; after it runs
    out every request is stored and answered 200. ``respond`` may be replaced to decide per request.
    """

    def __init__(self):
        self.script: list = []
        self.batches: dict[str, dict] = {}
        self.attempts: list[tuple[str | None, int]] = []
        self.authorizations: list[str | None] = []
        self.paths: list[str] = []
        self.respond: Callable[[dict], int | tuple[int, dict]] | None = None
        super().__init__()

    def answer(self, path: str, authorization: str | None, body: dict) -> tuple[int, dict, dict]:
        status, headers = self.handle(path, authorization, body)
        return status, headers, {"ok": 200 <= status < 300}

    def handle(self, path: str, authorization: str | None, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.paths.append(path)
            self.authorizations.append(authorization)
            if self.script:
                answer = self.script.pop(0)
            elif self.respond is not None:
                answer = self.respond(body)
            else:
                answer = 200
            status, headers = answer if isinstance(answer, tuple) else (answer, {})
            self.attempts.append((body.get("batch_id"), status))
            if 200 <= status < 300:
                self.batches.setdefault(body["batch_id"], body)
            return status, headers

    def metrics(self) -> list[dict]:
        with self.lock:
            return [m for b in self.batches.values() for m in b["metrics"]]

    def predictions(self) -> list[dict]:
        with self.lock:
            return [p for b in self.batches.values() for p in b["predictions"]]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

@pytest.fixture
def restore_signals():
    """``trainer.__main__.main`` installs SIGTERM/SIGINT handlers; put pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture
def collector():
    c = Collector().start()
    yield c
    c.stop()


@pytest.fixture
def dead_url() -> str:
    """A URL on which nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def write_spec(tmp_path: Path, tiny_model_dir: str):
    """Write a JobSpec JSON for the tiny model; keyword overrides merge into the config sections."""
    from trainer.tiny_model import write_sample_dataset

    def make(
        *,
        job_id: str = "0b5a4b8e-0000-4000-8000-000000000001",
        fmt: str = "instruction",
        rows: int = 64,
        ingest_url: str | None = None,
        token: str | None = "tok-e2e-9f8e7d6c5b4a",
        training: dict | None = None,
        predictions: dict | None = None,
        data: dict | None = None,
        model: dict | None = None,
        spec: dict | None = None,
    ) -> Path:
        dataset = write_sample_dataset(str(tmp_path / f"data-{fmt}.jsonl"), rows=rows, fmt=fmt)
        config = {
            "name": "tiny",
            "model": {"base_model": tiny_model_dir, "max_seq_length": 128, **(model or {})},
            "data": {"train_path": dataset, "eval_split": 0.2, **(data or {})},
            "training": {
                "max_steps": 20,
                "batch_size": 4,
                "learning_rate": 0.01,
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                **(training or {}),
            },
            "predictions": {"sample_count": 2, "max_new_tokens": 8, "temperature": 0.0, **(predictions or {})},
        }
        document = {
            "job_id": job_id,
            "config": config,
            "dataset_path": dataset,
            "dataset_format": fmt,
            "output_dir": str(tmp_path / "out"),
            "ingest_url": ingest_url,
            "ingest_token": token,
            **(spec or {}),
        }
        path = tmp_path / "spec.json"
        path.write_text(json.dumps(document))
        return path

    return make


@pytest.fixture
def make_spec(write_spec):
    """``write_spec`` read back as a JobSpec."""
    from shared.jobspec import JobSpec

    def make(**kwargs):
        return JobSpec.read(str(write_spec(**kwargs)))

    return make


class Judge(JsonServer):
    """An OpenAI-compatible chat-completions endpoint that grades every answer 7, for requests with the key."""

    path_prefix = "/v1"

    def __init__(self, key: str):
        self.key = key
        self.requests: list[dict] = []
        self.refused = 0
        super().__init__()

    def answer(self, path: str, authorization: str | None, body: dict) -> tuple[int, dict, dict]:
        authorized = authorization == f"Bearer {self.key}"
        with self.lock:
            if authorized and path == "/v1/chat/completions":
                self.requests.append(body)
            else:
                self.refused += 1
        if path != "/v1/chat/completions":
            return 404, {}, {"error": {"message": "not found"}}
        if not authorized:
            return 401, {}, {"error": {"message": "invalid api key"}}
        return 200, {}, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "7"}}]}


@pytest.fixture
def judge():
    j = Judge("sk-judge-test-5f4e3d2c1b").start()
    yield j
    j.stop()

"""A webhook receiver for tests: a real HTTP server on loopback that verifies every request's Standard Webhooks
signature and answers as a test scripts it."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass
class Received:
    webhook_id: str
    host: str
    payload: dict | None
    error: str | None
    answered: int


class Receiver:
    """An HTTP server on loopback: verifies each request with ``standardwebhooks`` and answers ``answers`` in turn,
    then 204."""

    def __init__(self, answers: tuple[int, ...] = ()):
        self.answers, self.requests, self.secret = list(answers), [], None
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                status = receiver.receive({k.lower(): v for k, v in self.headers.items()}, body)
                reply = b"" if status == 204 else b"not yet, " + b"x" * 2000
                self.send_response(status)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def receive(self, headers: dict, body: bytes) -> int:
        with self.lock:
            try:
                payload, error = Webhook(self.secret).verify(body, headers), None
            except WebhookVerificationError as exc:
                payload, error = None, str(exc)
            status = self.answers.pop(0) if self.answers else 204
            self.requests.append(Received(headers.get("webhook-id", ""), headers.get("host", ""), payload, error,
                                          status))
            return status

    def accepted(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.answered < 300]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    async def __aenter__(self) -> Receiver:
        return self.__enter__()

    async def __aexit__(self, *exc) -> None:
        await asyncio.to_thread(self.__exit__)

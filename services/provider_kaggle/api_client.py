"""Kaggle's API through the real ``kaggle`` client, one child process per call (``kaggle_call.py``).

Why a process per call: ``import kaggle`` authenticates at import from the environment and ``~/.kaggle``, reads
its endpoint at import, and ``exit(1)``s without credentials, and its clients fall back to the host's token files
when given none. A child with an empty home, an empty temp folder and only this user's credentials (sent on its
stdin, never in argv or the parent's environment) cannot serve one user's call with another's credentials, and
concurrent users share no state to race on. The cost is an interpreter start per call (well under a second).

``KAGGLE_API_BASE_URL`` (unset: the real Kaggle) is read per call. Errors are mapped here, once: 401/403 →
ProviderAuthFailed naming the fix; 429/5xx/transport → ProviderTransient; anything else → ProviderError. Reads are
retried with back-off; a create (dataset, push) is sent once.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from services.cloud.http import retrying
from shared.credentials import KaggleCredentials
from shared.errors import ProviderAuthFailed, ProviderError, ProviderTransient

CALL_SCRIPT = Path(__file__).with_name("kaggle_call.py")
FIX = "store a valid Kaggle username and key (PUT /api/secrets/kaggle)"
CALL_TIMEOUT_S = 900.0
#: What a child may inherit of this process's environment: no credentials, no KAGGLE_*, no TuneFleet settings.
INHERITED = ("PATH", "LANG", "LC_ALL", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY",
             "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


class NotFound(ProviderError):
    """Kaggle answered 404: the kernel or dataset does not exist (for this account)."""


class KaggleClient:
    def __init__(self, credentials: KaggleCredentials, *, attempts: int = 4):
        self._credentials = {
            "username": credentials.username,
            "key": credentials.key.get_secret_value() if credentials.key else None,
            "api_token": credentials.api_token.get_secret_value() if credentials.api_token else None}
        self.username = credentials.username
        self.attempts = attempts

    def __repr__(self) -> str:
        return f"KaggleClient(username={self.username!r}, key=***)"

    async def call(self, op: str, *, retry: bool = True, **args: Any) -> Any:
        if not retry:
            return await self._once(op, args)
        async for attempt in retrying(self.attempts):
            with attempt:
                return await self._once(op, args)
        raise AssertionError("unreachable")

    async def _once(self, op: str, args: dict) -> Any:
        request = json.dumps({"base_url": os.environ.get("KAGGLE_API_BASE_URL") or None,
                              "credentials": self._credentials, "op": op, "args": args}).encode()
        with tempfile.TemporaryDirectory(prefix="tunefleet-kaggle-") as home:
            env = {k: v for k, v in os.environ.items() if k in INHERITED}
            env.update(HOME=home, TMPDIR=home, PYTHONIOENCODING="utf-8")
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", str(CALL_SCRIPT), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=home)
            try:
                out, err = await asyncio.wait_for(process.communicate(request), CALL_TIMEOUT_S)
            except TimeoutError as exc:
                process.kill()
                await process.wait()
                raise ProviderTransient(f"the Kaggle call {op} timed out") from exc
        try:
            answer = json.loads(out)
        except ValueError as exc:
            raise ProviderError(f"the Kaggle client failed on {op} (exit code {process.returncode}): "
                                f"{err.decode(errors='replace')[-300:]}") from exc
        if "error" in answer:
            raise map_error(op, answer["error"])
        return answer["ok"]


def map_error(op: str, error: dict) -> ProviderError:
    """A classified client failure as TuneFleet's error, its message naming the fix."""
    kind, status, message = error.get("kind"), error.get("status"), error.get("message") or ""
    if kind == "auth" or status in (401, 403):
        return ProviderAuthFailed(f"Kaggle refused the credentials ({message}); {FIX}")
    if kind == "transport":
        return ProviderTransient(f"Kaggle API unreachable: {message}")
    if status == 429 or (isinstance(status, int) and status >= 500):
        retry_after = error.get("retry_after")
        try:
            seconds = float(retry_after) if retry_after else None
        except ValueError:
            seconds = None
        return ProviderTransient(f"Kaggle API answered {status} to {op}: {message}", retry_after=seconds)
    if status == 404:
        return NotFound(f"Kaggle: {message or 'not found'}")
    if kind == "http":
        return ProviderError(f"Kaggle answered {status} to {op}: {message}")
    return ProviderError(f"Kaggle refused {op}: {message}")

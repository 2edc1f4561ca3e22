"""The Hugging Face Hub, through ``huggingface_hub.HfApi``, one user's token per client.

``HfApi`` is built per call with the endpoint read from ``HF_ENDPOINT`` then and the client's own token, never the
module-global token or endpoint, so one user's token never serves another's call. Its calls block: each runs in
``asyncio.to_thread``. Every ``huggingface_hub`` and transport error is mapped here onto ``shared.errors``:
401 → ProviderAuthFailed, 429/5xx/time-outs → ProviderTransient (with Retry-After), a missing repo → ``Missing``,
anything else → ProviderError with the Hub's own message. Reads are retried with back-off; a create never is.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

from services.cloud.http import retrying
from shared.errors import ProviderAuthFailed, ProviderError, ProviderTransient

DEFAULT_ENDPOINT = "https://huggingface.co"
AUTH_FIX = "store a valid Hugging Face write token (PUT /api/secrets/huggingface)"
T = TypeVar("T")


class Missing(ProviderError):
    """The repo does not exist (or this token cannot see it)."""


#: The signed URLs in a text (their query strings are credentials: the Space's own, or a presigned upload's).
SIGNED = re.compile(r"(https?://[^\s?\"']+)\?[^\s\"']+")


def redacted(text: str) -> str:
    return SIGNED.sub(r"\1?<signed>", text)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def mapped(exc: BaseException, what: str) -> ProviderError:
    """An SDK or transport error as TuneFleet's error, with the Hub's message and what to do."""
    if isinstance(exc, HfHubHTTPError):
        response = exc.response
        status = response.status_code if response is not None else 0
        said = redacted((exc.server_message or "").strip() or str(exc).splitlines()[0])
        if status == 401 and not isinstance(exc, RepositoryNotFoundError):
            return ProviderAuthFailed(f"Hugging Face refused the token ({what}); {AUTH_FIX}")
        if isinstance(exc, RepositoryNotFoundError) and not isinstance(exc, GatedRepoError):
            return Missing(f"Hugging Face: {what}: not found")
        if status == 429 or status >= 500:
            retry_after = response.headers.get("retry-after") if response is not None else None
            try:
                wait = float(retry_after) if retry_after else None
            except ValueError:
                wait = None
            return ProviderTransient(f"Hugging Face answered {status} ({what}); retrying later", retry_after=wait)
        error = ProviderError(f"Hugging Face refused to {what} (HTTP {status}): {said}")
        error.details = {"status": status}
        return error
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderTransient(f"Hugging Face timed out ({what})")
    if isinstance(exc, httpx2.TransportError | ConnectionError):
        return ProviderTransient(f"Hugging Face unreachable ({what}): {type(exc).__name__}")
    return ProviderError(f"Hugging Face: {what} failed: {type(exc).__name__}: {exc}")


class HubClient:
    def __init__(self, token: str, *, attempts: int = 5):
        self._token = token
        self.attempts = attempts

    def __repr__(self) -> str:
        return "HubClient(token=***)"

    def _api(self) -> HfApi:
        return HfApi(endpoint=endpoint(), token=self._token, library_name="tunefleet")

    async def _once(self, what: str, call: Callable[[HfApi], T]) -> T:
        def run() -> T:
            return call(self._api())

        try:
            return await asyncio.to_thread(run)
        except ProviderError:
            raise
        except Exception as exc:  # every SDK and transport error is mapped; none escapes
            raise mapped(exc, what) from None

    async def _read(self, what: str, call: Callable[[HfApi], T]) -> T:
        async for attempt in retrying(self.attempts):
            with attempt:
                return await self._once(what, call)
        raise AssertionError("unreachable")

    # Account and catalogue --------------------------------------------------------------------------------

    async def whoami(self) -> dict:
        return await self._read("check the token (whoami)", lambda api: api.whoami())

    async def hardware(self) -> list[Any]:
        return await self._read("list the Spaces hardware", lambda api: api.list_spaces_hardware())

    # Spaces -----------------------------------------------------------------------------------------------

    async def variables(self, space_id: str) -> dict[str, str] | None:
        """The Space's variables; None when the Space does not exist for this token."""
        try:
            found = await self._read(f"read the variables of Space {space_id}",
                                     lambda api: api.get_space_variables(space_id))
        except Missing:
            return None
        return {key: variable.value for key, variable in found.items()}

    async def runtime(self, space_id: str) -> dict | None:
        """The Space's runtime as the Hub sends it (``stage`` a raw string); None when it does not exist."""
        try:
            return (await self._read(f"read the runtime of Space {space_id}",
                                     lambda api: api.get_space_runtime(space_id))).raw
        except Missing:
            return None

    async def create_space(self, space_id: str, *, private: bool, hardware: str, secrets: dict[str, str],
                           variables: dict[str, str]) -> None:
        """One create call, never retried: a lost answer is looked up by name."""
        await self._once(f"create Space {space_id}", lambda api: api.create_repo(
            space_id, repo_type="space", space_sdk="docker", private=private, space_hardware=hardware,
            space_secrets=[{"key": k, "value": v} for k, v in secrets.items()],
            space_variables=[{"key": k, "value": v} for k, v in variables.items()]))

    async def put_secrets(self, space_id: str, secrets: dict[str, str]) -> None:
        for key, value in secrets.items():
            await self._read(f"set a secret of Space {space_id}",
                             lambda api, k=key, v=value: api.add_space_secret(space_id, k, v))

    async def delete_secret(self, space_id: str, key: str) -> None:
        await self._read(f"delete a secret of Space {space_id}", lambda api: api.delete_space_secret(space_id, key))

    async def put_variable(self, space_id: str, key: str, value: str) -> None:
        await self._read(f"set a variable of Space {space_id}",
                         lambda api: api.add_space_variable(space_id, key, value))

    async def request_hardware(self, space_id: str, hardware: str) -> None:
        await self._read(f"request hardware {hardware} for Space {space_id}",
                         lambda api: api.request_space_hardware(space_id, hardware))

    async def restart(self, space_id: str) -> None:
        await self._read(f"restart Space {space_id}", lambda api: api.restart_space(space_id))

    async def pause(self, space_id: str) -> bool:
        """Pause the Space (its billing stops); False when it does not exist."""
        try:
            await self._read(f"pause Space {space_id}", lambda api: api.pause_space(space_id))
        except Missing:
            return False
        return True

    async def delete(self, repo_id: str, repo_type: str = "space") -> None:
        await self._read(f"delete {repo_type} {repo_id}",
                         lambda api: api.delete_repo(repo_id, repo_type=repo_type, missing_ok=True))

    async def logs(self, space_id: str, *, build: bool) -> list[str]:
        """The buffered build or run log lines of the Space (no-follow)."""
        which = "build" if build else "run"
        return await self._read(f"read the {which} log of Space {space_id}",
                                lambda api: list(api.fetch_space_logs(space_id, build=build)))

    # Repos ------------------------------------------------------------------------------------------------

    async def commit(self, repo_id: str, files: dict[str, bytes | Path], message: str, *,
                     repo_type: str = "space") -> str:
        """One commit of these files (a commit of unchanged files is a no-op, so it is safe to retry)."""
        def call(api: HfApi) -> str:
            operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=content if isinstance(content, bytes)
                                             else str(content)) for path, content in sorted(files.items())]
            return api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type).oid

        return await self._read(f"commit to {repo_type} {repo_id}", call)

    async def ensure_model_repo(self, repo_id: str) -> str:
        """A private model repo, created if missing; its URL."""
        url = await self._read(f"create model repo {repo_id}",
                               lambda api: api.create_repo(repo_id, repo_type="model", private=True, exist_ok=True))
        return str(url)

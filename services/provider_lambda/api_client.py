"""Lambda Cloud's REST API (v1) through httpx: there is no official Python SDK."""

from __future__ import annotations

import contextlib
import os

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from shared.errors import NoCapacity, ProviderAuthFailed, ProviderError, ProviderTransient

DEFAULT_BASE_URL = "https://cloud.lambdalabs.com/api/v1"


def _wait(state) -> float:
    exc = state.outcome.exception()
    if isinstance(exc, ProviderTransient) and exc.retry_after is not None:
        return min(exc.retry_after, 60.0)
    return min(0.5 * 2 ** (state.attempt_number - 1), 8.0)


class LambdaClient:
    def __init__(self, api_key: str, *, attempts: int = 6, timeout: float = 30.0):
        self._api_key, self.attempts, self.timeout = api_key, attempts, timeout

    def __repr__(self) -> str:
        return "LambdaClient(api_key=***)"

    async def _call(self, method: str, path: str, json: dict | None = None) -> dict | list:
        async for attempt in AsyncRetrying(stop=stop_after_attempt(self.attempts), wait=_wait, reraise=True,
                                           retry=retry_if_exception(lambda e: isinstance(e, ProviderTransient))):
            with attempt:
                return await self._send(method, path, json)
        raise AssertionError("unreachable")

    async def _send(self, method: str, path: str, json: dict | None) -> dict | list:
        base = os.environ.get("LAMBDA_API_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.request(method, base + path, json=json,
                                                headers={"Authorization": f"Bearer {self._api_key}"})
        except httpx.TimeoutException as exc:
            raise ProviderTransient("Lambda API timed out") from exc
        except httpx.TransportError as exc:
            raise ProviderTransient(f"Lambda API unreachable: {type(exc).__name__}") from exc
        if response.status_code == 401:
            raise ProviderAuthFailed("Lambda refused the API key; update it with PUT /api/secrets/lambda")
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = response.headers.get("retry-after")
            raise ProviderTransient(f"Lambda API answered {response.status_code}",
                                    retry_after=float(retry_after) if retry_after else None)
        try:
            body = response.json()
        except ValueError as exc:
            raise ProviderTransient(f"Lambda API answered {response.status_code} without JSON") from exc
        if response.status_code >= 400:
            error = body.get("error") or {}
            code, message = error.get("code", ""), error.get("message", "unknown error")
            if code == "instance-operations/launch/insufficient-capacity":
                raise NoCapacity(f"Lambda: {message}")
            if code == "global/object-does-not-exist":
                raise LookupError(message)
            fields = ", ".join(body.get("field_errors") or {})
            raise ProviderError(f"Lambda: {message}" + (f" ({fields})" if fields else ""),
                                field=next(iter(body.get("field_errors") or {}), None))
        return body["data"]

    async def instance_types(self) -> dict:
        return await self._call("GET", "/instance-types")

    async def instances(self) -> list[dict]:
        return await self._call("GET", "/instances")

    async def instance(self, instance_id: str) -> dict | None:
        try:
            return await self._call("GET", f"/instances/{instance_id}")
        except LookupError:
            return None

    async def launch(self, *, region: str, instance_type: str, ssh_key_name: str, name: str) -> str:
        data = await self._call("POST", "/instance-operations/launch", {
            "region_name": region, "instance_type_name": instance_type, "ssh_key_names": [ssh_key_name],
            "file_system_names": [], "quantity": 1, "name": name})
        return data["instance_ids"][0]

    async def terminate(self, instance_id: str) -> None:
        await self._call("POST", "/instance-operations/terminate", {"instance_ids": [instance_id]})

    async def ssh_keys(self) -> list[dict]:
        return await self._call("GET", "/ssh-keys")

    async def add_ssh_key(self, name: str, public_key: str) -> dict:
        return await self._call("POST", "/ssh-keys", {"name": name, "public_key": public_key})

    async def delete_ssh_key(self, key_id: str) -> None:
        with contextlib.suppress(LookupError):
            await self._call("DELETE", f"/ssh-keys/{key_id}")

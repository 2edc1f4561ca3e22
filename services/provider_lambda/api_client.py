"""Lambda Cloud's REST API (v1) through httpx: there is no official Python SDK."""

from __future__ import annotations

import contextlib
import os

from services.cloud.http import json_of, retrying, send
from shared.errors import NoCapacity, ProviderError

DEFAULT_BASE_URL = "https://cloud.lambdalabs.com/api/v1"


class LambdaClient:
    def __init__(self, api_key: str, *, attempts: int = 6, timeout: float = 30.0):
        self._api_key, self.attempts, self.timeout = api_key, attempts, timeout

    def __repr__(self) -> str:
        return "LambdaClient(api_key=***)"

    async def _call(self, method: str, path: str, json: dict | None = None) -> dict | list:
        async for attempt in retrying(self.attempts):
            with attempt:
                return await self._send(method, path, json)
        raise AssertionError("unreachable")

    async def _send(self, method: str, path: str, json: dict | None) -> dict | list:
        base = os.environ.get("LAMBDA_API_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
        response = await send(method, base + path, cloud="Lambda", provider="lambda", json=json,
                              headers={"Authorization": f"Bearer {self._api_key}"}, request_timeout=self.timeout)
        body = json_of(response, "Lambda")
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

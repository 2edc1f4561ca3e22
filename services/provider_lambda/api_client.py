"""Lambda Cloud's REST API (v1) through httpx: there is no official Python SDK.

Lambda allows about one request per second per account and one launch per 12 seconds (its API spec 1.8.3: "one
request per 12 seconds, or five requests per minute"); going over answers 429 with no JSON and no Retry-After.
Every call therefore waits its turn at a per-account ``Spacing`` in this process before it is sent, retries
included.
Reads are retried with back-off; a launch is sent once (see ``Compute.provision``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time

from services.cloud.http import json_of, retrying, send
from shared.errors import NoCapacity, ProviderError

DEFAULT_BASE_URL = "https://cloud.lambdalabs.com/api/v1"
#: Seconds from one answer to the next request, and to the next launch, of one account (Lambda's limits).
REQUEST_INTERVAL_S = 1.0
LAUNCH_INTERVAL_S = 12.0
INSTANCE_TYPES_TTL_S = 60.0
LIVE = ("booting", "active", "unhealthy")


class NotFoundAtLambda(ProviderError):
    code = "not_found_at_provider"


class Spacing:
    """One request at a time, each sent at least ``interval`` seconds after the previous one was answered: the
    gap Lambda sees between two arrivals is then never shorter, whatever the latency. (A token bucket counts from
    when a slot is taken, which a second, nested limit or a slow network can push past the first's.)"""

    def __init__(self, interval: float):
        self.interval = interval
        self._lock = asyncio.Lock()
        self._last = -1e9

    @contextlib.asynccontextmanager
    async def slot(self):
        async with self._lock:
            delay = self._last + self.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                yield
            finally:
                self._last = time.monotonic()


_spacings: dict[tuple[int, str, str], Spacing] = {}
_locks: dict[tuple[int, str, str], asyncio.Lock] = {}
_cache: dict[tuple[str, str], tuple[float, object]] = {}


def _spacing(account: str, kind: str, interval: float) -> Spacing:
    key = (id(asyncio.get_running_loop()), account, kind)
    if key not in _spacings:
        _spacings[key] = Spacing(interval)
    return _spacings[key]


class LambdaClient:
    def __init__(self, api_key: str, *, attempts: int = 8, timeout: float = 30.0):
        self._api_key, self.attempts, self.timeout = api_key, attempts, timeout
        self._account = hashlib.sha256(api_key.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return "LambdaClient(api_key=***)"

    async def _call(self, method: str, path: str, json: dict | None = None, *, retry: bool = True) -> dict | list:
        if not retry:
            return await self._send(method, path, json)
        async for attempt in retrying(self.attempts):
            with attempt:
                return await self._send(method, path, json)
        raise AssertionError("unreachable")

    async def _send(self, method: str, path: str, json: dict | None) -> dict | list:
        launching = path == "/instance-operations/launch"
        launches = _spacing(self._account, "launch", LAUNCH_INTERVAL_S) if launching else None
        base = os.environ.get("LAMBDA_API_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
        async with contextlib.AsyncExitStack() as stack:
            if launches is not None:
                await stack.enter_async_context(launches.slot())
            await stack.enter_async_context(_spacing(self._account, "request", REQUEST_INTERVAL_S).slot())
            response = await send(method, base + path, cloud="Lambda", provider="lambda", json=json,
                                  headers={"Authorization": f"Bearer {self._api_key}"}, request_timeout=self.timeout)
        body = json_of(response, "Lambda")
        if response.status_code >= 400:
            error = body.get("error") or {}
            code, message = error.get("code", ""), error.get("message", "unknown error")
            if code == "instance-operations/launch/insufficient-capacity":
                raise NoCapacity(f"Lambda: {message}")
            if code == "global/object-does-not-exist" or response.status_code == 404:
                raise NotFoundAtLambda(f"Lambda: {message}")
            fields = body.get("field_errors") or {}
            suggestion = f" {error['suggestion']}" if error.get("suggestion") else ""
            raise ProviderError(f"Lambda: {message}{suggestion}" + (f" ({', '.join(fields)})" if fields else ""),
                                field=next(iter(fields), None))
        return body["data"]

    async def _cached(self, what: str, ttl: float, fetch):
        """``fetch()``, or its answer of less than ``ttl`` seconds ago; concurrent callers share one call."""
        key = (self._account, what)
        lock = _locks.setdefault((id(asyncio.get_running_loop()), *key), asyncio.Lock())
        async with lock:
            hit = _cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < ttl:
                return hit[1]
            value = await fetch()
            _cache[key] = (time.monotonic(), value)
            return value

    async def instance_types(self, *, fresh: bool = False) -> dict:
        """The instance types with their prices and regions with capacity; reused for a minute unless ``fresh``."""
        return await self._cached("instance-types", 0.0 if fresh else INSTANCE_TYPES_TTL_S,
                                  lambda: self._call("GET", "/instance-types"))

    async def instances(self, *, max_age_s: float = 0.0) -> list[dict]:
        """The account's instances; with ``max_age_s`` an answer up to that old is reused (one list call per
        poll round serves every instance of the account)."""
        return await self._cached("instances", max_age_s, lambda: self._call("GET", "/instances"))

    async def instance(self, instance_id: str) -> dict | None:
        try:
            return await self._call("GET", f"/instances/{instance_id}")
        except NotFoundAtLambda:
            return None

    async def launch(self, *, region: str, instance_type: str, ssh_key_name: str, name: str) -> str:
        """One launch request, never retried here: a lost answer may have launched the instance."""
        data = await self._call("POST", "/instance-operations/launch", {
            "region_name": region, "instance_type_name": instance_type, "ssh_key_names": [ssh_key_name],
            "file_system_names": [], "name": name}, retry=False)
        _cache.pop((self._account, "instances"), None)
        return data["instance_ids"][0]

    async def terminate(self, instance_id: str) -> None:
        """Idempotent: an instance Lambda does not know (any more) is already gone."""
        with contextlib.suppress(NotFoundAtLambda):
            await self._call("POST", "/instance-operations/terminate", {"instance_ids": [instance_id]})
        _cache.pop((self._account, "instances"), None)

    async def ssh_keys(self) -> list[dict]:
        return await self._call("GET", "/ssh-keys")

    async def add_ssh_key(self, name: str, public_key: str) -> dict:
        return await self._call("POST", "/ssh-keys", {"name": name, "public_key": public_key})

    async def delete_ssh_key(self, key_id: str) -> None:
        with contextlib.suppress(NotFoundAtLambda):
            await self._call("DELETE", f"/ssh-keys/{key_id}")

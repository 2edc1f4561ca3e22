"""HTTP to a cloud's API: what counts as retryable, how long to wait, and the errors a provider raises."""

from __future__ import annotations

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from shared.errors import ProviderAuthFailed, ProviderTransient


def _wait(state) -> float:
    """Honour Retry-After when the API sent one, else back off exponentially (0.5 s … 8 s)."""
    exc = state.outcome.exception()
    if isinstance(exc, ProviderTransient) and exc.retry_after is not None:
        return min(exc.retry_after, 60.0)
    return min(0.5 * 2 ** (state.attempt_number - 1), 8.0)


def retrying(attempts: int) -> AsyncRetrying:
    """Retry what is transient (429, 5xx, time-outs, unreachable), up to ``attempts`` tries."""
    return AsyncRetrying(stop=stop_after_attempt(attempts), wait=_wait, reraise=True,
                         retry=retry_if_exception(lambda e: isinstance(e, ProviderTransient)))


async def send(method: str, url: str, *, cloud: str, provider: str, headers: dict, json: dict | None = None,
               request_timeout: float = 30.0) -> httpx.Response:
    """One request; 401 becomes ProviderAuthFailed naming where to fix the key, 429/5xx/transport errors
    ProviderTransient (with Retry-After). Any other answer is returned for the caller to read."""
    try:
        async with httpx.AsyncClient(timeout=request_timeout) as client:
            response = await client.request(method, url, headers=headers, json=json)
    except httpx.TimeoutException as exc:
        raise ProviderTransient(f"{cloud} API timed out") from exc
    except httpx.TransportError as exc:
        raise ProviderTransient(f"{cloud} API unreachable: {type(exc).__name__}") from exc
    if response.status_code == 401:
        raise ProviderAuthFailed(f"{cloud} refused the API key; update it with PUT /api/secrets/{provider}")
    if response.status_code == 429 or response.status_code >= 500:
        retry_after = response.headers.get("retry-after")
        raise ProviderTransient(f"{cloud} API answered {response.status_code}",
                                retry_after=float(retry_after) if retry_after else None)
    return response


def json_of(response: httpx.Response, cloud: str):
    try:
        return response.json()
    except ValueError as exc:
        raise ProviderTransient(f"{cloud} API answered {response.status_code} without JSON") from exc

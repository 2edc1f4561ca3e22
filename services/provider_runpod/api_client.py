"""RunPod's GraphQL API: the ``runpod`` package writes the queries, httpx carries them.

The package's own transport cannot take a per-call key for mutations (it reads a module global, unsafe with
many users in one process), hides ``Retry-After`` and raises plain JSON errors on a 502 page, so calls go
through httpx with the same headers and body, and the same ``RUNPOD_API_BASE_URL`` override, read per call.
"""

from __future__ import annotations

import os

from runpod.api.mutations import pods as pod_mutations
from runpod.api.queries import gpus as gpu_queries
from runpod.api.queries import pods as pod_queries
from runpod.user_agent import USER_AGENT

from services.cloud.http import json_of, retrying, send
from shared.errors import NoCapacity, ProviderError

DEFAULT_BASE_URL = "https://api.runpod.io"
NO_CAPACITY = "no longer any instances available"


class RunPodClient:
    def __init__(self, api_key: str, *, attempts: int = 6, timeout: float = 30.0):
        self._api_key = api_key
        self.attempts = attempts
        self.timeout = timeout

    def __repr__(self) -> str:
        return "RunPodClient(api_key=***)"

    async def _call(self, query: str) -> dict:
        async for attempt in retrying(self.attempts):
            with attempt:
                return await self._post(query)
        raise AssertionError("unreachable")

    async def _post(self, query: str) -> dict:
        url = os.environ.get("RUNPOD_API_BASE_URL", DEFAULT_BASE_URL).rstrip("/") + "/graphql"
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "Authorization": f"Bearer {self._api_key}"}
        response = await send("POST", url, cloud="RunPod", provider="runpod", headers=headers,
                              json={"query": query}, request_timeout=self.timeout)
        body = json_of(response, "RunPod")
        if body.get("errors"):
            message = body["errors"][0].get("message", "unknown error")
            if NO_CAPACITY in message:
                raise NoCapacity(f"RunPod: {message}")
            raise ProviderError(f"RunPod: {message}")
        return body["data"]

    async def gpu_types(self) -> list[dict]:
        return (await self._call(gpu_queries.QUERY_GPU_TYPES))["gpuTypes"]

    async def pods(self) -> list[dict]:
        return (await self._call(pod_queries.QUERY_POD))["myself"]["pods"]

    async def pod(self, pod_id: str) -> dict | None:
        return (await self._call(pod_queries.generate_pod_query(pod_id)))["pod"]

    async def create_pod(self, *, name: str, image: str, gpu_type_id: str, gpu_count: int, volume_in_gb: int,
                         env: dict[str, str], docker_args: str) -> dict:
        for key, value in {**env, "name": name, "image": image, "docker_args": docker_args}.items():
            if '"' in value or "\\" in value:
                raise ProviderError(f"{key} holds a double quote or backslash, which RunPod's API cannot carry",
                                    field=key)
        mutation = pod_mutations.generate_pod_deployment_mutation(
            name=name, image_name=image, gpu_type_id=gpu_type_id, gpu_count=gpu_count, volume_in_gb=volume_in_gb,
            container_disk_in_gb=20, min_vcpu_count=1, min_memory_in_gb=1, docker_args=docker_args, env=env,
            support_public_ip=True, start_ssh=False)
        return (await self._call(mutation))["podFindAndDeployOnDemand"]

    async def terminate_pod(self, pod_id: str) -> None:
        await self._call(pod_mutations.generate_pod_terminate_mutation(pod_id))

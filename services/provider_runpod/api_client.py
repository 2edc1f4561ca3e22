"""RunPod's GraphQL API, carried by httpx.

The ``runpod`` package writes the documents it gets right (the GPU list, the pod list, terminate; pod ids are
RunPod's own); the pod
mutation and the pod query are built in ``.graphql``, because the package's versions interpolate strings without
escaping, cannot send ``minCudaVersion`` and select no ``runtime.uptimeInSeconds``. httpx carries them because
the package's transport reads a module-global key for mutations (unsafe with many users), hides
``Retry-After`` and raises plain JSON errors on a 502 page. ``RUNPOD_API_BASE_URL`` is read per call.

A create is sent once and never retried here: if its answer is lost the pod may exist (see
``Compute.provision``). Reads and terminate are retried with back-off.
"""

from __future__ import annotations

import os

from runpod.api.mutations import pods as pod_mutations
from runpod.api.queries import gpus as gpu_queries
from runpod.api.queries import pods as pod_queries
from runpod.user_agent import USER_AGENT

from services.cloud.http import json_of, retrying, send
from shared.errors import NoCapacity, ProviderError

from .graphql import Enum, document

DEFAULT_BASE_URL = "https://api.runpod.io"
NO_CAPACITY = "no longer any instances available"
#: What RunPod answers (HTTP 200) to terminating a pod it does not know.
POD_NOT_FOUND = "pod not found to terminate"
POD_FIELDS = ("id", "name", "desiredStatus", "costPerHr", "imageName", "gpuCount", "lastStatusChange",
              ("runtime", ("uptimeInSeconds", ("ports", ("ip", "isIpPublic", "privatePort", "publicPort", "type")))))


#: The price fields of ``gpuTypes`` (as the SDK's ``get_gpu`` asks for one type), the lowest on-demand price of one GPU.
GPU_OFFERS = ("query GpuOffers { gpuTypes { id displayName memoryInGb maxGpuCount secureCloud communityCloud "
              "securePrice communityPrice lowestPrice(input: {gpuCount: 1}) { minimumBidPrice uninterruptablePrice } "
              "} }")


class RunPodClient:
    def __init__(self, api_key: str, *, attempts: int = 6, timeout: float = 30.0):
        self._api_key = api_key
        self.attempts = attempts
        self.timeout = timeout

    def __repr__(self) -> str:
        return "RunPodClient(api_key=***)"

    async def _call(self, query: str, *, retry: bool = True) -> dict:
        if not retry:
            return await self._post(query)
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

    async def gpu_offers(self) -> list[dict]:
        """Every GPU type with its prices: the fields the SDK's ``get_gpu`` selects, for all types at once."""
        return (await self._call(GPU_OFFERS))["gpuTypes"]

    async def pods(self) -> list[dict]:
        return (await self._call(pod_queries.QUERY_POD))["myself"]["pods"]

    async def pod(self, pod_id: str) -> dict | None:
        return (await self._call(document("query", "pod", {"input": {"podId": pod_id}}, POD_FIELDS)))["pod"]

    async def create_pod(self, *, name: str, image: str, gpu_type_id: str, gpu_count: int, volume_in_gb: int,
                         container_disk_in_gb: int, volume_mount_path: str, env: dict[str, str], docker_args: str,
                         min_cuda_version: str) -> dict:
        """``podFindAndDeployOnDemand``, sent once. No public IP (the workload only calls out) and no SSH."""
        mutation = document("mutation", "podFindAndDeployOnDemand", {"input": {
            "name": name, "imageName": image, "cloudType": Enum("ALL"), "gpuTypeId": gpu_type_id,
            "gpuCount": gpu_count, "supportPublicIp": False, "startSsh": False, "volumeInGb": volume_in_gb,
            "containerDiskInGb": container_disk_in_gb, "volumeMountPath": volume_mount_path,
            "minVcpuCount": 2, "minMemoryInGb": 8, "minCudaVersion": min_cuda_version, "dockerArgs": docker_args,
            "env": [{"key": k, "value": v} for k, v in env.items()]}},
            ("id", "imageName", "machineId", "costPerHr", ("machine", ("podHostId",))))
        return (await self._call(mutation, retry=False))["podFindAndDeployOnDemand"]

    async def terminate_pod(self, pod_id: str) -> None:
        """Idempotent: a pod RunPod does not know is already gone."""
        try:
            await self._call(pod_mutations.generate_pod_terminate_mutation(pod_id))
        except ProviderError as exc:
            if POD_NOT_FOUND not in exc.message:
                raise

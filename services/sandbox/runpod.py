"""An emulator of the part of RunPod's GraphQL API that the ``runpod`` package uses.

Reached through ``RUNPOD_API_BASE_URL``. It parses the inline GraphQL literals the SDK sends, keeps pods,
and runs each pod's ``dockerArgs`` as a local process with the pod's env once the pod has "booted" (the
image is not pulled: this machine's Python stands in for it). Faults: stuck provisioning, HTTP errors,
a 429 storm, a workload killed mid-run (the pod disappears, as a reclaimed spot pod does).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphql import GraphQLError, parse
from graphql.language import FieldNode, OperationDefinitionNode, SelectionSetNode
from graphql.utilities import value_from_ast_untyped
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .workloads import kill_group, spawn

GPU_TYPES = {
    "NVIDIA GeForce RTX 4090": {"displayName": "RTX 4090", "memoryInGb": 24, "securePrice": 0.69},
    "NVIDIA RTX A6000": {"displayName": "RTX A6000", "memoryInGb": 48, "securePrice": 0.79},
    "NVIDIA A100 80GB PCIe": {"displayName": "A100 80GB", "memoryInGb": 80, "securePrice": 1.64},
    "NVIDIA H100 80GB HBM3": {"displayName": "H100 SXM", "memoryInGb": 80, "securePrice": 2.99},
}


@dataclass
class Faults:
    stuck_provisioning: bool = False
    http_errors: int = 0          # answer the next N requests with 500
    rate_limited: int = 0         # answer the next N requests with 429 and Retry-After
    retry_after_s: float = 1.0
    no_capacity: bool = False


@dataclass
class Pod:
    id: str
    name: str
    image: str
    gpu_type: str
    gpu_count: int
    env: dict[str, str]
    docker_args: str
    volume_in_gb: int
    created: float
    cost_per_hr: float
    desired_status: str = "RUNNING"
    runtime: dict | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def as_graphql(self) -> dict[str, Any]:
        uptime = int(time.time() - self.created)
        return {
            "id": self.id, "name": self.name, "imageName": self.image, "desiredStatus": self.desired_status,
            "costPerHr": self.cost_per_hr, "gpuCount": self.gpu_count, "volumeInGb": self.volume_in_gb,
            "containerDiskInGb": 10, "dockerArgs": self.docker_args, "dockerId": None,
            "env": [f"{k}={v}" for k, v in self.env.items()], "lastStatusChange": self.desired_status,
            "machineId": f"m-{self.id}", "memoryInGb": 62, "vcpuCount": 8, "podType": "RESERVED",
            "port": None, "ports": "22/tcp", "uptimeSeconds": uptime, "volumeMountPath": "/runpod-volume",
            "runtime": self.runtime, "machine": {"gpuDisplayName": GPU_TYPES[self.gpu_type]["displayName"],
                                                "podHostId": f"{self.id}-64410c1f"},
        }


class RunPodEmulator:
    def __init__(self, workdir: Path, api_keys: set[str], *, boot_delay_s: float = 0.5):
        self.workdir = workdir
        self.api_keys = api_keys
        self.boot_delay_s = boot_delay_s
        self.faults = Faults()
        self.pods: dict[str, Pod] = {}
        self.requests: list[str] = []  # every query text received, for tests to search
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[Route("/graphql", self.graphql, methods=["POST"])], lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        ticker = asyncio.create_task(self._tick())
        try:
            yield
        finally:
            ticker.cancel()
            self.shutdown()

    def shutdown(self) -> None:
        for pod in self.pods.values():
            if pod.process is not None:
                kill_group(pod.process)

    # Lifecycle ------------------------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            now = time.time()
            for pod in list(self.pods.values()):
                if pod.desired_status != "RUNNING":
                    continue
                booted = now - pod.created >= self.boot_delay_s and not self.faults.stuck_provisioning
                if pod.runtime is None and booted:
                    self._boot(pod)
                elif pod.process is not None and pod.process.poll() is not None:
                    pod.desired_status = "EXITED"  # the container's command ended
            await asyncio.sleep(0.1)

    def _boot(self, pod: Pod) -> None:
        folder = self.workdir / pod.id
        pod.runtime = {"ports": [{"ip": "127.0.0.1", "isIpPublic": True, "privatePort": 22, "publicPort": 22022,
                                  "type": "tcp"}]}
        env = {**pod.env, "RUNPOD_POD_ID": pod.id}
        pod.process = spawn(pod.docker_args, env, folder / "workspace", folder / "container.log")

    def kill_workload(self, pod_id: str) -> None:
        """A reclaimed spot pod: its container dies and the pod is gone."""
        pod = self.pods.pop(pod_id)
        if pod.process is not None:
            kill_group(pod.process)

    def running_processes(self) -> list[Pod]:
        return [p for p in self.pods.values() if p.process is not None and p.process.poll() is None]

    # GraphQL --------------------------------------------------------------------------------------------

    async def graphql(self, request: Request) -> JSONResponse:
        if self.faults.rate_limited > 0:
            self.faults.rate_limited -= 1
            return JSONResponse({"errors": [{"message": "Too Many Requests"}]}, status_code=429,
                                headers={"Retry-After": str(self.faults.retry_after_s)})
        if self.faults.http_errors > 0:
            self.faults.http_errors -= 1
            return JSONResponse({"errors": [{"message": "Internal Server Error"}]}, status_code=500)
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or key not in self.api_keys:
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        body = await request.json()
        query = body.get("query", "")
        self.requests.append(query)
        try:
            document = parse(query)
        except GraphQLError as exc:
            return JSONResponse({"errors": [{"message": f"Syntax Error: {exc.message}"}], "data": None})
        operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
        data: dict[str, Any] = {}
        for node in operation.selection_set.selections:
            assert isinstance(node, FieldNode)
            args = {a.name.value: value_from_ast_untyped(a.value) for a in node.arguments or ()}
            try:
                value = self._resolve(node.name.value, args)
            except ValueError as exc:
                return JSONResponse({"errors": [{"message": str(exc)}], "data": None})
            data[node.alias.value if node.alias else node.name.value] = _project(value, node.selection_set)
        return JSONResponse({"data": data})

    def _resolve(self, name: str, args: dict) -> Any:
        given = args.get("input") or {}
        if name == "gpuTypes":
            wanted = given.get("id")
            return [{"id": gid, "maxGpuCount": 8, "manufacturer": "Nvidia", "secureCloud": True,
                     "communityCloud": True, "communityPrice": info["securePrice"] * 0.8,
                     "lowestPrice": {"minimumBidPrice": info["securePrice"] * 0.5,
                                     "uninterruptablePrice": info["securePrice"]}, **info}
                    for gid, info in GPU_TYPES.items() if wanted in (None, gid)]
        if name == "myself":
            return {"id": "user-1", "pubKey": "", "networkVolumes": [],
                    "pods": [p.as_graphql() for p in self.pods.values()]}
        if name == "pod":
            pod = self.pods.get(given.get("podId"))
            return pod.as_graphql() if pod else None
        if name == "podFindAndDeployOnDemand":
            return self._create(given).as_graphql()
        if name == "podTerminate":
            pod = self.pods.pop(given.get("podId"), None)
            if pod and pod.process is not None:
                kill_group(pod.process)
            return None
        if name == "podStop":
            pod = self.pods[given["podId"]]
            pod.desired_status = "EXITED"
            if pod.process is not None:
                kill_group(pod.process)
            return pod.as_graphql()
        raise ValueError(f'Cannot query field "{name}" on type "Query".')

    def _create(self, given: dict) -> Pod:
        gpu = given.get("gpuTypeId")
        if gpu not in GPU_TYPES:
            raise ValueError("Something went wrong. Please try again later or contact support.")
        if self.faults.no_capacity:
            raise ValueError("There are no longer any instances available with the requested specifications. "
                             "Please refresh and try again.")
        pod_id = f"{secrets.token_hex(6)}{next(self._ids)}"
        env = {item["key"]: item["value"] for item in given.get("env") or []}
        count = int(given.get("gpuCount") or 1)
        pod = Pod(id=pod_id, name=given["name"], image=given["imageName"], gpu_type=gpu, gpu_count=count,
                  env=env, docker_args=given.get("dockerArgs") or "", volume_in_gb=int(given.get("volumeInGb") or 0),
                  created=time.time(), cost_per_hr=round(GPU_TYPES[gpu]["securePrice"] * count, 4))
        self.pods[pod_id] = pod
        return pod


def _project(value: Any, selection: SelectionSetNode | None) -> Any:
    """Keep only the selected fields, as a GraphQL server does."""
    if selection is None or value is None:
        return value
    if isinstance(value, list):
        return [_project(v, selection) for v in value]
    out = {}
    for node in selection.selections:
        if isinstance(node, FieldNode):
            out[node.name.value] = _project(value.get(node.name.value), node.selection_set)
    return out

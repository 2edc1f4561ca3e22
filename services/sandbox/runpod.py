"""An emulator of RunPod's GraphQL API, at least as strict as RunPod where that hurts.

Reached through ``RUNPOD_API_BASE_URL``. It parses the inline GraphQL literals clients send, refuses input fields
RunPod does not define, keeps pods, and runs each pod's container on an emulated machine (``.machines``) once its
image has "pulled". As RunPod does:

* the GPU catalogue has RunPod's ids (docs "GPU types", 2026-02) and on-demand secure-cloud prices;
* an image takes time to pull (``MachineImage.pull_s``); an image it does not know never starts: ``runtime``
  stays null for ever;
* a plain-string ``dockerArgs`` replaces the image's CMD and is handed to its ENTRYPOINT; the JSON form
  ``{"entrypoint": [...], "cmd": [...]}`` replaces both;
* a container whose command exits is restarted, with its uptime reset; ``desiredStatus`` stays RUNNING (only a
  stop or a terminate writes EXITED), so a crashing command loops;
* the volume is mounted at ``volumeMountPath`` (emulated by pointing the container's paths below it into the
  pod's volume folder);
* terminating an unknown pod answers ``pod not found to terminate`` (HTTP 200); a terminated pod leaves
  ``myself.pods`` and reads EXITED.

Faults: stuck provisioning, HTTP 500s, a 429 storm with Retry-After, no capacity, a lost create answer (the pod
exists), a slow pull, a container killed some seconds after each start (a crash loop), ``runtime`` null for a
while (host trouble, the container runs on), a pod lost mid-run (a reclaimed host).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import secrets
import shlex
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
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from .machines import (
    MachineImage,
    StockImages,
    discard_disk,
    kill_group,
    kill_machine,
    machine_env,
    machine_processes,
    spawn,
)

#: id → (display name, memory GB, on-demand secure $/h per GPU; skypilot-catalog's RunPod snapshot).
GPU_TYPES = {
    "NVIDIA GeForce RTX 4090": ("RTX 4090", 24, 0.69),
    "NVIDIA RTX A4000": ("RTX A4000", 16, 0.32),
    "NVIDIA RTX A5000": ("RTX A5000", 24, 0.29),
    "NVIDIA RTX A6000": ("RTX A6000", 48, 0.49),
    "NVIDIA A40": ("A40", 48, 0.44),
    "NVIDIA L4": ("L4", 24, 0.44),
    "NVIDIA L40S": ("L40S", 48, 0.86),
    "NVIDIA RTX 6000 Ada Generation": ("RTX 6000 Ada", 48, 0.77),
    # RunPod's REST v1 enum lists this id; no published price was found: between the A6000 and the A100 80GB.
    "NVIDIA A100-SXM4-40GB": ("A100 SXM 40GB", 40, 1.19),
    "NVIDIA A100 80GB PCIe": ("A100 PCIe", 80, 1.64),
    "NVIDIA A100-SXM4-80GB": ("A100 SXM", 80, 1.89),
    "NVIDIA H100 PCIe": ("H100 PCIe", 80, 2.39),
    "NVIDIA H100 80GB HBM3": ("H100 SXM", 80, 2.99),
    "NVIDIA H100 NVL": ("H100 NVL", 94, 2.79),
    "NVIDIA H200": ("H200 SXM", 141, 3.99),
}
#: The fields of PodFindAndDeployOnDemandInput; anything else is a GraphQL validation error.
CREATE_FIELDS = frozenset({
    "name", "imageName", "cloudType", "gpuTypeId", "gpuCount", "supportPublicIp", "startSsh", "startJupyter",
    "volumeInGb", "containerDiskInGb", "minVcpuCount", "minMemoryInGb", "dockerArgs", "ports", "volumeMountPath",
    "env", "templateId", "networkVolumeId", "dataCenterId", "countryCode", "allowedCudaVersions", "minCudaVersion",
    "cudaVersion", "minDownload", "minUpload", "deployCost", "stopAfter", "terminateAfter", "instanceId"})
RESTART_DELAY_S = 1.0


@dataclass
class Faults:
    stuck_provisioning: bool = False
    http_errors: int = 0          # answer the next N requests with 500
    rate_limited: int = 0         # answer the next N requests with 429 and Retry-After
    retry_after_s: float = 1.0
    no_capacity: bool = False
    sold_out: set[str] = field(default_factory=set)  # GPU type ids with none free: no on-demand price, no create
    lost_create_answers: int = 0  # create the pod, then answer the next N creates with a 504 page
    slow_pull_s: float = 0.0      # added to the pull of pods created from now on
    crash_after_s: float | None = None  # kill each container this long after it starts


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
    container_disk_in_gb: int
    volume_mount_path: str
    created: float
    pulled_at: float | None
    cost_per_hr: float
    folder: Path
    account: str = ""
    desired_status: str = "RUNNING"
    last_status_change: str = "Rented by User"
    process: subprocess.Popen | None = field(default=None, repr=False)
    started_at: float | None = None
    starts: int = 0
    next_start_at: float = 0.0
    runtime_hidden_until: float = 0.0

    def runtime(self, now: float) -> dict | None:
        if self.desired_status != "RUNNING" or self.starts == 0 or now < self.runtime_hidden_until:
            return None
        running = self.process is not None and self.process.poll() is None
        return {"uptimeInSeconds": int(now - self.started_at) if running and self.started_at else 0,
                "ports": [] if running else None,
                "gpus": [{"id": f"gpu-{i}", "gpuUtilPercent": 0, "memoryUtilPercent": 0}
                         for i in range(self.gpu_count)],
                "container": {"cpuPercent": 0, "memoryPercent": 0}}

    def as_graphql(self) -> dict[str, Any]:
        now = time.time()
        display = GPU_TYPES[self.gpu_type][0]
        return {
            "id": self.id, "name": self.name, "imageName": self.image, "desiredStatus": self.desired_status,
            "costPerHr": self.cost_per_hr, "gpuCount": self.gpu_count, "volumeInGb": self.volume_in_gb,
            "containerDiskInGb": self.container_disk_in_gb, "dockerArgs": self.docker_args, "dockerId": None,
            "env": [f"{k}={v}" for k, v in self.env.items()], "lastStatusChange": self.last_status_change,
            "machineId": f"m-{self.id}", "memoryInGb": 62, "vcpuCount": 8, "podType": "RESERVED",
            "port": None, "ports": "", "uptimeSeconds": 0, "volumeMountPath": self.volume_mount_path,
            "runtime": self.runtime(now), "machine": {"gpuDisplayName": display, "podHostId": f"{self.id}-64410c1f"},
        }


class RunPodEmulator:
    def __init__(self, workdir: Path, api_keys: set[str], *, stock: StockImages, images: dict[str, MachineImage]):
        self.workdir, self.api_keys, self.stock, self.images = workdir, api_keys, stock, dict(images)
        self.faults = Faults()
        self.pods: dict[str, Pod] = {}
        self.ended: dict[str, Pod] = {}
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
        for pod in [*self.pods.values(), *self.ended.values()]:
            self._stop_container(pod)

    # Containers -----------------------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            now = time.time()
            for pod in list(self.pods.values()):
                with contextlib.suppress(Exception):
                    self._advance(pod, now)
            await asyncio.sleep(0.1)

    def _advance(self, pod: Pod, now: float) -> None:
        if pod.desired_status != "RUNNING" or pod.pulled_at is None or self.faults.stuck_provisioning:
            return
        running = pod.process is not None and pod.process.poll() is None
        if running:
            crash = self.faults.crash_after_s
            if crash is not None and pod.started_at and now - pod.started_at >= crash:
                self._stop_container(pod)
            return
        if pod.process is not None:  # the command ended: Docker's restart policy brings it back
            pod.process = None
            pod.next_start_at = now + RESTART_DELAY_S
        if now >= pod.pulled_at and now >= pod.next_start_at:
            self._start_container(pod, now)

    def _in_container(self, pod: Pod, path: str) -> str:
        """A path of the container: below the volume's mount point it lands in the pod's volume folder."""
        mount = pod.volume_mount_path.rstrip("/")
        if pod.volume_in_gb > 0 and (path == mount or path.startswith(mount + "/")):
            return str(pod.folder / "volume") + path[len(mount):]
        return path

    def _start_container(self, pod: Pod, now: float) -> None:
        image = self.images[pod.image]
        argv = container_argv(image, pod.docker_args)
        env = {k: self._in_container(pod, v) for k, v in pod.env.items()}
        env = machine_env(pod.id, image, self.stock, pod.folder / "root", {**env, "RUNPOD_POD_ID": pod.id})
        workdir = Path(self._in_container(pod, "/workspace"))
        if str(workdir) == "/workspace":
            workdir = pod.folder / "container" / "workspace"
        pod.started_at, pod.starts = now, pod.starts + 1
        try:
            pod.process = spawn(argv, env, workdir, pod.folder / "container.log")
        except OSError as exc:  # the command does not exist in the image: the container exits at once
            with open(pod.folder / "container.log", "a") as log:
                log.write(f"exec: {exc}\n")
            pod.process = subprocess.Popen(["false"])

    def _stop_container(self, pod: Pod) -> None:
        if pod.process is not None:
            kill_group(pod.process)
        kill_machine(pod.id)

    def _discard(self, pod: Pod) -> None:
        """A terminated pod's disks are gone; its logs stay readable (``log_path``)."""
        discard_disk(pod.folder, self.workdir / "logs" / pod.id)

    def log_path(self, pod_id: str, relative: str) -> Path:
        """A file of a pod's disks, or the kept copy of its log once the pod is gone."""
        pod = self.pods.get(pod_id) or self.ended.get(pod_id)
        live = pod.folder / relative if pod else None
        return live if live is not None and live.exists() else self.workdir / "logs" / pod_id / relative

    def kill_workload(self, pod_id: str) -> None:
        """A reclaimed host: the container dies and RunPod stops the pod."""
        pod = self.pods.pop(pod_id)
        self._stop_container(pod)
        pod.desired_status, pod.last_status_change = "EXITED", f"Exited by Runpod: {time.ctime()}"
        self.ended[pod_id] = pod
        self._discard(pod)

    def hide_runtime(self, pod_id: str, seconds: float) -> None:
        """Host trouble: the API reports no runtime for a while; the container runs on."""
        self.pods[pod_id].runtime_hidden_until = time.time() + seconds

    def running_processes(self, pod_id: str | None = None) -> list:
        ids = [pod_id] if pod_id else [*self.pods, *self.ended]
        return [p for i in ids for p in machine_processes(i)]

    def only_account(self) -> str:
        if len(self.api_keys) != 1:
            raise ValueError("name the account: this emulator has several API keys")
        return account_of(next(iter(self.api_keys)))

    # GraphQL --------------------------------------------------------------------------------------------

    async def graphql(self, request: Request):
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
        account = account_of(key)
        body = await request.json()
        query = body.get("query", "")
        self.requests.append(query)
        try:
            document = parse(query)
        except GraphQLError as exc:
            return JSONResponse({"errors": [{"message": f"Syntax Error: {exc.message}"}], "data": None},
                                status_code=400)
        operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
        data: dict[str, Any] = {}
        for node in operation.selection_set.selections:
            assert isinstance(node, FieldNode)
            args = {a.name.value: value_from_ast_untyped(a.value) for a in node.arguments or ()}
            try:
                value = self._resolve(node.name.value, args, account)
            except _Invalid as exc:
                return JSONResponse({"errors": [{"message": str(exc)}]}, status_code=400)
            except ValueError as exc:
                return JSONResponse({"errors": [{"message": str(exc), "path": [node.name.value]}], "data": None})
            except _LostAnswer:
                return PlainTextResponse("<html><body><h1>504 Gateway Time-out</h1></body></html>", 504,
                                         media_type="text/html")
            data[node.alias.value if node.alias else node.name.value] = _project(value, node.selection_set)
        return JSONResponse({"data": data})

    def _own(self, pod_id: str | None, account: str, *, ended: bool = False) -> Pod | None:
        """A pod of ``account``: another account's pods do not exist for it, as on RunPod."""
        pod = self.pods.get(pod_id) or (self.ended.get(pod_id) if ended else None)
        return pod if pod is not None and pod.account == account else None

    def _resolve(self, name: str, args: dict, account: str) -> Any:
        given = args.get("input") or {}
        if name == "gpuTypes":
            wanted = given.get("id")
            return [{"id": gid, "displayName": display, "memoryInGb": memory, "maxGpuCount": 8,
                     "manufacturer": "Nvidia", "secureCloud": True, "communityCloud": True, "securePrice": price,
                     "communityPrice": round(price * 0.8, 2),
                     "lowestPrice": {"minimumBidPrice": round(price * 0.5, 2), "uninterruptablePrice":
                                     None if gid in self.faults.sold_out else price}}
                    for gid, (display, memory, price) in GPU_TYPES.items() if wanted in (None, gid)]
        if name == "myself":
            return {"id": f"user-{account}", "pubKey": "", "networkVolumes": [],
                    "pods": [p.as_graphql() for p in self.pods.values() if p.account == account]}
        if name == "pod":
            pod = self._own(given.get("podId"), account, ended=True)
            return pod.as_graphql() if pod else None
        if name == "podFindAndDeployOnDemand":
            return self._create(given, account).as_graphql()
        if name == "podTerminate":
            pod = self._own(given.get("podId"), account)
            if pod is None:
                raise ValueError("pod not found to terminate")
            del self.pods[pod.id]
            self._stop_container(pod)
            pod.desired_status, pod.last_status_change = "EXITED", f"Terminated by user: {time.ctime()}"
            self.ended[pod.id] = pod
            self._discard(pod)
            return None
        if name == "podStop":
            pod = self._own(given.get("podId"), account)
            if pod is None:
                raise ValueError("pod not found to stop")
            self._stop_container(pod)
            pod.desired_status, pod.last_status_change = "EXITED", f"Exited by user: {time.ctime()}"
            return pod.as_graphql()
        raise _Invalid(f'Cannot query field "{name}" on type "Query".')

    def _create(self, given: dict, account: str | None = None) -> Pod:
        """A new pod of ``account`` (by default the only key's: tests make pods behind TuneFleet's back)."""
        account = account or self.only_account()
        unknown = sorted(set(given) - CREATE_FIELDS)
        if unknown:
            raise _Invalid(f'Field "{unknown[0]}" is not defined by type "PodFindAndDeployOnDemandInput".')
        gpu = given.get("gpuTypeId")
        if gpu not in GPU_TYPES:
            raise ValueError("Something went wrong. Please try again later or contact support.")
        if self.faults.no_capacity or gpu in self.faults.sold_out:
            raise ValueError("There are no longer any instances available with the requested specifications. "
                             "Please refresh and try again.")
        pod_id = f"{secrets.token_hex(6)}{next(self._ids)}"
        count = int(given.get("gpuCount") or 1)
        image = given["imageName"]
        now = time.time()
        known = self.images.get(image)
        pod = Pod(id=pod_id, name=given["name"], image=image, gpu_type=gpu, gpu_count=count,
                  env={item["key"]: item["value"] for item in given.get("env") or []},
                  docker_args=given.get("dockerArgs") or "", volume_in_gb=int(given.get("volumeInGb") or 0),
                  container_disk_in_gb=int(given.get("containerDiskInGb") or 10),
                  volume_mount_path=given.get("volumeMountPath") or "/runpod-volume", created=now,
                  pulled_at=now + known.pull_s + self.faults.slow_pull_s if known else None,
                  cost_per_hr=round(GPU_TYPES[gpu][2] * count, 4), folder=self.workdir / pod_id, account=account)
        pod.folder.mkdir(parents=True)
        self.pods[pod_id] = pod
        if self.faults.lost_create_answers > 0:
            self.faults.lost_create_answers -= 1
            raise _LostAnswer
        return pod


def account_of(api_key: str) -> str:
    """The account an API key belongs to: each key is an account of its own here."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


def container_argv(image: MachineImage, docker_args: str) -> list[str]:
    """What a container runs: RunPod's JSON form replaces ENTRYPOINT and CMD; a plain string replaces CMD only."""
    if not docker_args.strip():
        return [*image.entrypoint, *image.cmd]
    with contextlib.suppress(ValueError):
        parsed = json.loads(docker_args)
        if isinstance(parsed, dict) and ({"cmd", "entrypoint"} & set(parsed)):
            entrypoint = parsed.get("entrypoint", list(image.entrypoint))
            return [*entrypoint, *parsed.get("cmd", [])]
    return [*image.entrypoint, *shlex.split(docker_args)]


class _Invalid(Exception):
    """A GraphQL validation error: HTTP 400."""


class _LostAnswer(Exception):
    """The create went through; its answer never reaches the client."""


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

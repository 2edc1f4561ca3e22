"""RunPod behind the shared compute interface.

A pod runs a stock image (``Settings.runpod_default_image``, a public PyTorch image with CUDA 12) unless the deploy
names one. Its start command is the fixed bootstrap (``trainer.bootstrap.START_ARGV``), given as RunPod's JSON
form of ``dockerArgs`` so that it replaces the image's ENTRYPOINT instead of being handed to it as arguments. The
volume, mounted at /workspace, holds the Hugging Face cache, the job folder with its checkpoints and the trainer's
venv, so a restarted container neither downloads nor installs again.

RunPod restarts a container whose command exits and keeps ``desiredStatus`` RUNNING, so the bootstrap never
exits (it reports its end and holds); the runner counts restarts from ``runtime.uptimeInSeconds``.
"""

from __future__ import annotations

import json

from shared.catalogue import Offer
from shared.credentials import RunPodCredentials
from shared.errors import ProviderError
from shared.events import WorkloadPhase
from shared.providers import (
    Compute,
    OwnResource,
    Provisioned,
    ResourceStatus,
    WorkloadRequest,
    parse_resource_name,
    unseal_environment,
)
from shared.settings import Settings
from trainer.bootstrap import START_ARGV

from .api_client import RunPodClient

#: The default image is built for CUDA 12.8: a host whose driver is older cannot run it.
MIN_CUDA_VERSION = "12.8"
VOLUME_MOUNT = "/workspace"
CONTAINER_DISK_GB = 30
DEFAULT_VOLUME_GB = 50
GONE = ("EXITED", "TERMINATED", "DEAD")


def pod_phase(pod: dict | None) -> ResourceStatus:
    """RunPod's pod states onto TuneFleet's phases, in one place. ``desiredStatus`` is what was asked for, not
    what is: a RUNNING pod without ``runtime`` is pulling its image, starting, or on a host in trouble; EXITED
    comes from a stop or a terminate (by the user or by RunPod), never from the container's command ending."""
    if pod is None:
        return ResourceStatus(phase=None, detail="the pod does not exist")
    desired, cost = pod.get("desiredStatus"), pod.get("costPerHr")
    cost = float(cost) if cost is not None else None
    if desired == "RUNNING":
        runtime = pod.get("runtime")
        if runtime is None:
            return ResourceStatus(WorkloadPhase.PROVISIONING, "waiting for the container (image pull or start)", cost)
        uptime = runtime.get("uptimeInSeconds")
        return ResourceStatus(WorkloadPhase.RUNNING, "running", cost, float(uptime) if uptime is not None else None)
    if desired in GONE:
        change = pod.get("lastStatusChange") or desired.lower()
        return ResourceStatus(phase=None, detail=f"the pod was stopped ({change})")
    return ResourceStatus(WorkloadPhase.PROVISIONING, f"pod is {str(desired).lower()}", cost)


def docker_args() -> str:
    """The fixed start command in RunPod's JSON form, which replaces the image's ENTRYPOINT."""
    return json.dumps({"entrypoint": START_ARGV[:2], "cmd": START_ARGV[2:]})


def runpod_offer(gpu: dict) -> Offer | None:
    """One GPU type of ``gpuTypes`` with its lowest on-demand price of one GPU; None for a type with no price at all.
    A type with no on-demand price now has no capacity (RunPod drops the price when none is free)."""
    lowest = (gpu.get("lowestPrice") or {}).get("uninterruptablePrice")
    listed = [p for p in (gpu.get("securePrice"), gpu.get("communityPrice")) if p]
    price = lowest if lowest else min(listed, default=None)
    if price is None:
        return None
    return Offer(provider="runpod", gpu_type=gpu["id"], description=gpu.get("displayName") or gpu["id"],
                 vram_gb=gpu.get("memoryInGb"), usd_per_hour=float(price), per_gpu=True,
                 gpu_count=int(gpu.get("maxGpuCount") or 8), capacity=bool(lowest),
                 source="RunPod API: gpuTypes lowestPrice(gpuCount: 1)")


class RunPodCompute(Compute[RunPodCredentials]):
    name = "runpod"

    def __init__(self, settings: Settings):
        self.settings = settings

    def client(self, credentials: RunPodCredentials) -> RunPodClient:
        return RunPodClient(credentials.api_key.get_secret_value())

    async def catalogue(self, credentials: RunPodCredentials) -> list[Offer]:
        return [offer for gpu in await self.client(credentials).gpu_offers() if (offer := runpod_offer(gpu))]

    async def validate(self, request: WorkloadRequest, credentials: RunPodCredentials) -> None:
        gpu = request.options.get("gpu_type")
        known = {g["id"] for g in await self.client(credentials).gpu_types()}
        if gpu not in known:
            raise ProviderError(f"gpu_type {gpu!r} is not offered by RunPod; choose one of {sorted(known)}",
                                field="gpu_type")

    async def provision(self, request: WorkloadRequest, credentials: RunPodCredentials) -> Provisioned:
        opts = request.options
        env = {"HF_HOME": f"{VOLUME_MOUNT}/huggingface", **opts.get("environment_variables", {}),
               **unseal_environment(self.settings, opts), **request.env,
               "TUNEFLEET_WORKDIR": f"{VOLUME_MOUNT}/tunefleet-job",
               "TUNEFLEET_VENV_DIR": f"{VOLUME_MOUNT}/tunefleet-venv"}
        pod = await self.client(credentials).create_pod(
            name=request.name, image=opts.get("docker_image") or self.settings.runpod_default_image,
            gpu_type_id=opts["gpu_type"], gpu_count=int(opts.get("gpu_count", 1)),
            volume_in_gb=int(opts.get("volume_size_gb") or DEFAULT_VOLUME_GB), container_disk_in_gb=CONTAINER_DISK_GB,
            volume_mount_path=VOLUME_MOUNT, env=env, docker_args=docker_args(), min_cuda_version=MIN_CUDA_VERSION)
        cost = pod.get("costPerHr")
        if cost is None:
            cost = (await self.status(pod["id"], credentials)).cost_per_hour
        return Provisioned(resource_id=pod["id"], cost_per_hour=float(cost or 0.0))

    async def find(self, name: str, credentials: RunPodCredentials) -> Provisioned | None:
        for pod in await self.client(credentials).pods():
            if pod.get("name") == name and pod.get("desiredStatus") not in GONE:
                return Provisioned(pod["id"], float(pod.get("costPerHr") or 0.0))
        return None

    async def status(self, resource_id: str, credentials: RunPodCredentials) -> ResourceStatus:
        return pod_phase(await self.client(credentials).pod(resource_id))

    async def terminate(self, resource_id: str, credentials: RunPodCredentials) -> None:
        await self.client(credentials).terminate_pod(resource_id)

    async def list_own(self, credentials: RunPodCredentials) -> list[OwnResource]:
        own, installation = [], self.installation
        for pod in await self.client(credentials).pods():
            parsed = parse_resource_name(pod.get("name") or "", installation)
            if pod.get("desiredStatus") not in GONE and parsed:
                own.append(OwnResource(pod["id"], *parsed))
        return own

"""RunPod behind the shared compute interface."""

from __future__ import annotations

import shlex

from shared.credentials import RunPodCredentials
from shared.errors import ProviderError
from shared.events import WorkloadPhase
from shared.providers import Compute, OwnResource, Provisioned, ResourceStatus, WorkloadRequest, parse_resource_name

from .api_client import RunPodClient

DEFAULT_IMAGE = "ghcr.io/tunefleet/trainer:0.1.0"


def pod_phase(pod: dict | None) -> ResourceStatus:
    """RunPod's pod states onto TuneFleet's phases, in one place. ``desiredStatus`` is what was asked for;
    a RUNNING pod without ``runtime`` is still pulling its image."""
    if pod is None:
        return ResourceStatus(phase=None, detail="the pod does not exist")
    desired, cost = pod.get("desiredStatus"), pod.get("costPerHr")
    cost = float(cost) if cost is not None else None
    if desired == "RUNNING":
        if pod.get("runtime") is None:
            return ResourceStatus(WorkloadPhase.PROVISIONING, "starting the container", cost)
        return ResourceStatus(WorkloadPhase.RUNNING, "running", cost)
    if desired in ("EXITED", "DEAD"):
        return ResourceStatus(WorkloadPhase.FAILED, f"the container stopped ({desired.lower()})", cost)
    if desired == "TERMINATED":
        return ResourceStatus(phase=None, detail="the pod was terminated")
    return ResourceStatus(WorkloadPhase.PROVISIONING, f"pod is {str(desired).lower()}", cost)


class RunPodCompute(Compute[RunPodCredentials]):
    name = "runpod"

    def client(self, credentials: RunPodCredentials) -> RunPodClient:
        return RunPodClient(credentials.api_key.get_secret_value())

    async def validate(self, request: WorkloadRequest, credentials: RunPodCredentials) -> None:
        gpu = request.options.get("gpu_type")
        known = {g["id"] for g in await self.client(credentials).gpu_types()}
        if gpu not in known:
            raise ProviderError(f"gpu_type {gpu!r} is not offered by RunPod; choose one of {sorted(known)}",
                                field="gpu_type")

    async def provision(self, request: WorkloadRequest, credentials: RunPodCredentials) -> Provisioned:
        opts = request.options
        pod = await self.client(credentials).create_pod(
            name=request.name, image=opts.get("docker_image") or DEFAULT_IMAGE, gpu_type_id=opts["gpu_type"],
            gpu_count=int(opts.get("gpu_count", 1)), volume_in_gb=int(opts.get("volume_size_gb", 0)),
            env={**opts.get("environment_variables", {}), **request.env}, docker_args=shlex.join(request.command))
        status = await self.status(pod["id"], credentials)
        return Provisioned(resource_id=pod["id"], cost_per_hour=status.cost_per_hour or 0.0)

    async def status(self, resource_id: str, credentials: RunPodCredentials) -> ResourceStatus:
        return pod_phase(await self.client(credentials).pod(resource_id))

    async def terminate(self, resource_id: str, credentials: RunPodCredentials) -> None:
        await self.client(credentials).terminate_pod(resource_id)

    async def list_own(self, credentials: RunPodCredentials) -> list[OwnResource]:
        own = []
        for pod in await self.client(credentials).pods():
            if parsed := parse_resource_name(pod.get("name") or ""):
                own.append(OwnResource(pod["id"], *parsed))
        return own

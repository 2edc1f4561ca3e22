"""Lambda Cloud behind the shared compute interface: REST for the instance, SSH/SFTP for the workload."""

from __future__ import annotations

import asyncio
import contextlib
import posixpath

from services.cloud.bundles import artifacts_dir, bundle_dir
from shared.credentials import LambdaCredentials
from shared.errors import NoCapacity, ProviderError
from shared.events import WorkloadPhase
from shared.providers import (
    Compute,
    OwnResource,
    Provisioned,
    ResourceStatus,
    WorkloadRequest,
    parse_resource_name,
    resource_name,
)
from shared.settings import Settings

from .api_client import LambdaClient
from .ssh import JOB_DIR, START_COMMAND, Session, derive_key

STATUS_PHASE = {"booting": WorkloadPhase.PROVISIONING, "unhealthy": WorkloadPhase.FAILED}


class LambdaCompute(Compute[LambdaCredentials]):
    name = "lambda"

    def __init__(self, settings: Settings):
        self.settings = settings

    def client(self, credentials: LambdaCredentials) -> LambdaClient:
        return LambdaClient(credentials.api_key.get_secret_value())

    async def _region(self, request: WorkloadRequest, credentials: LambdaCredentials) -> str:
        wanted, region = request.options.get("instance_type"), request.options.get("region")
        offers = await self.client(credentials).instance_types()
        if wanted not in offers:
            raise ProviderError(f"instance_type {wanted!r} is not offered by Lambda; choose one of {sorted(offers)}",
                                field="instance_type")
        regions = [r["name"] for r in offers[wanted]["regions_with_capacity_available"]]
        if (region and region not in regions) or not regions:
            where = f"in {region}" if region else "in any region"
            raise NoCapacity(f"Lambda has no {wanted} capacity {where} now (regions with capacity: {regions})")
        return region or regions[0]

    async def validate(self, request: WorkloadRequest, credentials: LambdaCredentials) -> None:
        await self._region(request, credentials)

    async def provision(self, request: WorkloadRequest, credentials: LambdaCredentials) -> Provisioned:
        client = self.client(credentials)
        _, public_key = derive_key(self.settings.require_secret_key(), request.name)
        existing = {k["name"] for k in await client.ssh_keys()}
        if request.name not in existing:
            await client.add_ssh_key(request.name, public_key)
        instance_id = await client.launch(region=await self._region(request, credentials),
                                          instance_type=request.options["instance_type"],
                                          ssh_key_name=request.name, name=request.name)
        offers = await client.instance_types()
        price = offers[request.options["instance_type"]]["instance_type"]["price_cents_per_hour"] / 100
        return Provisioned(resource_id=instance_id, cost_per_hour=price)

    async def status(self, resource_id: str, credentials: LambdaCredentials) -> ResourceStatus:
        instance = await self.client(credentials).instance(resource_id)
        if instance is None or instance["status"] in ("terminating", "terminated"):
            return ResourceStatus(phase=None, detail="the instance is gone")
        price = instance["instance_type"]["price_cents_per_hour"] / 100
        if instance["status"] != "active":
            return ResourceStatus(STATUS_PHASE.get(instance["status"], WorkloadPhase.PROVISIONING),
                                  f"instance is {instance['status']}", price)
        detail = await asyncio.to_thread(self._tend, instance)
        phase = WorkloadPhase.FAILED if detail.startswith("trainer exited") else WorkloadPhase.RUNNING
        return ResourceStatus(phase, detail, price)

    def _tend(self, instance: dict) -> str:
        """Over SSH: start the workload once, copy the log tail, and bring the output back when it ends."""
        job_id, attempt = parse_resource_name(instance["name"])
        key, _ = derive_key(self.settings.require_secret_key(), instance["name"])
        local = artifacts_dir(self.settings, job_id, attempt)
        with Session(instance["ip"], self.settings.lambda_ssh_port, key) as ssh:
            if not ssh.exists(posixpath.join(JOB_DIR, "started")):
                ssh.upload_folder(bundle_dir(self.settings, job_id, attempt), JOB_DIR)
                code, out = ssh.run(START_COMMAND)
                if code != 0:
                    raise ProviderError(f"starting the trainer over SSH failed ({code}): {out[-500:]}")
                return "trainer started"
            local.mkdir(parents=True, exist_ok=True)
            if ssh.exists(posixpath.join(JOB_DIR, "train.log")):
                (local / "log-tail.txt").write_bytes(ssh.read(posixpath.join(JOB_DIR, "train.log"), 16000))
            if not ssh.exists(posixpath.join(JOB_DIR, "exit_code")):
                return "training"
            exit_code = ssh.read(posixpath.join(JOB_DIR, "exit_code")).decode().strip()
            output = posixpath.join(JOB_DIR, "output")
            if ssh.exists(posixpath.join(output, "result.json")):
                ssh.download_folder(output, local, skip=frozenset({"checkpoints"}))
                return "artifacts fetched"
            return f"trainer exited with code {exit_code} and wrote no result"

    async def logs(self, resource_id: str, credentials: LambdaCredentials, *, tail_bytes: int = 4000) -> str | None:
        instance = await self.client(credentials).instance(resource_id)
        if not instance or instance["status"] != "active":
            return None
        key, _ = derive_key(self.settings.require_secret_key(), instance["name"])

        def tail() -> str:
            with Session(instance["ip"], self.settings.lambda_ssh_port, key) as ssh:
                return ssh.read(posixpath.join(JOB_DIR, "train.log"), tail_bytes).decode(errors="replace")

        return await asyncio.to_thread(tail)

    async def terminate(self, resource_id: str, credentials: LambdaCredentials) -> None:
        client = self.client(credentials)
        instance = await client.instance(resource_id)
        await client.terminate(resource_id)
        if instance and (parsed := parse_resource_name(instance.get("name") or "")):
            name = resource_name(*parsed)
            with contextlib.suppress(ProviderError):  # a key still in use goes with a later reconciliation
                for key in await client.ssh_keys():
                    if key["name"] == name:
                        await client.delete_ssh_key(key["id"])

    async def list_own(self, credentials: LambdaCredentials) -> list[OwnResource]:
        own = []
        for instance in await self.client(credentials).instances():
            if instance["status"] != "terminated" and (parsed := parse_resource_name(instance.get("name") or "")):
                own.append(OwnResource(instance["id"], *parsed))
        return own

"""Lambda Cloud behind the shared compute interface: REST for the instance, SSH and SFTP for the workload.

An instance is ``active`` before its sshd accepts connections, so the workload is started by ``start`` once SSH
answers (tried with back-off; the runner's provisioning deadline bounds the wait). The workload keeps its output
on the instance; ``collect`` brings the log tail and progress over, and the output once it has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import re
import time

import asyncpg

from services.cloud.bundles import LOG_TAIL, PROGRESS, RESULT, write_atomically
from services.cloud.joblog import LOG, append_at, log_size
from shared.catalogue import Offer
from shared.credentials import LambdaCredentials
from shared.errors import NoCapacity, ProviderError, ProviderTransient
from shared.events import WorkloadPhase
from shared.providers import (
    Compute,
    OwnResource,
    Provisioned,
    ResourceStatus,
    WorkloadRequest,
    parse_resource_name,
)
from shared.settings import Settings

from .api_client import LIVE, LambdaClient
from .ssh import JOB_DIR, START_COMMAND, HostKey, Session, derive_key

PHASES = {"booting": WorkloadPhase.PROVISIONING, "active": WorkloadPhase.RUNNING,
          "unhealthy": WorkloadPhase.FAILED}
SSH_BACKOFF_MAX_S = 30.0
#: The machine's log brought over SFTP per poll at most (the rest at the next).
LOG_PULL_BYTES = 1 << 20


class HostKeys:
    """Host keys pinned at first contact, in the provider's own table."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def get(self, instance_id: str) -> HostKey | None:
        row = await self.pool.fetchrow("SELECT key_type, key_base64 FROM lambda_host_keys WHERE instance_id = $1",
                                       instance_id)
        return HostKey(row["key_type"], row["key_base64"]) if row else None

    async def pin(self, instance_id: str, key: HostKey) -> HostKey:
        """Pin ``key`` unless one is pinned already; returns the pinned key."""
        await self.pool.execute(
            """INSERT INTO lambda_host_keys (instance_id, key_type, key_base64) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING""", instance_id, key.key_type, key.key_base64)
        return await self.get(instance_id)


#: "1x A100 (40 GB SXM4)": the memory of each GPU, in a Lambda instance type's description.
_GPU_MEMORY = re.compile(r"\((\d+) GB")
_GPU_COUNT = re.compile(r"gpu_(\d+)x_")


def lambda_offer(name: str, offer: dict) -> Offer:
    """One instance type of ``GET /instance-types``: its price per hour in cents, and the regions with capacity."""
    kind = offer["instance_type"]
    description = kind.get("gpu_description") or kind.get("description") or name
    memory = _GPU_MEMORY.search(kind.get("description") or "")
    count = (kind.get("specs") or {}).get("gpus") or (int(m.group(1)) if (m := _GPU_COUNT.match(name)) else 1)
    regions = [r["name"] for r in offer.get("regions_with_capacity_available") or []]
    return Offer(provider="lambda", gpu_type=name, description=description, gpu_count=int(count),
                 vram_gb=float(memory.group(1)) if memory else None,
                 usd_per_hour=kind["price_cents_per_hour"] / 100, capacity=bool(regions), regions=regions,
                 source="Lambda API: GET /instance-types")


class LambdaCompute(Compute[LambdaCredentials]):
    name = "lambda"
    pushes_reports = False

    def __init__(self, settings: Settings, pool: asyncpg.Pool):
        self.settings = settings
        self.host_keys = HostKeys(pool)
        self._next_ssh_try: dict[str, tuple[int, float]] = {}

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

    async def catalogue(self, credentials: LambdaCredentials) -> list[Offer]:
        # fresh: the catalogue keeps its own answers; capacity changes by the minute
        types = await self.client(credentials).instance_types(fresh=True)
        return [lambda_offer(name, offer) for name, offer in types.items()]

    async def validate(self, request: WorkloadRequest, credentials: LambdaCredentials) -> None:
        await self._region(request, credentials)

    async def provision(self, request: WorkloadRequest, credentials: LambdaCredentials) -> Provisioned:
        client = self.client(credentials)
        _, public_key = derive_key(self.settings.require_secret_key(), request.name)
        if request.name not in {k["name"] for k in await client.ssh_keys()}:
            await client.add_ssh_key(request.name, public_key)
        instance_type = request.options["instance_type"]
        instance_id = await client.launch(region=await self._region(request, credentials),
                                          instance_type=instance_type, ssh_key_name=request.name, name=request.name)
        offers = await client.instance_types()
        return Provisioned(instance_id, offers[instance_type]["instance_type"]["price_cents_per_hour"] / 100)

    async def find(self, name: str, credentials: LambdaCredentials) -> Provisioned | None:
        for instance in await self.client(credentials).instances():
            if instance.get("name") == name and instance["status"] in LIVE:
                return Provisioned(instance["id"], instance["instance_type"]["price_cents_per_hour"] / 100)
        return None

    async def _instance(self, instance_id: str, credentials: LambdaCredentials) -> dict | None:
        client = self.client(credentials)
        listed = await client.instances(max_age_s=self.settings.cloud_poll_interval_s / 2)
        found = next((i for i in listed if i["id"] == instance_id), None)
        return found if found is not None else await client.instance(instance_id)

    async def status(self, resource_id: str, credentials: LambdaCredentials) -> ResourceStatus:
        instance = await self._instance(resource_id, credentials)
        if instance is None or instance["status"] not in PHASES:
            state = instance["status"] if instance else "gone"
            return ResourceStatus(phase=None, detail=f"the instance is {state}")
        price = instance["instance_type"]["price_cents_per_hour"] / 100
        phase = PHASES[instance["status"]]
        detail = "Lambda reports the instance unhealthy" if phase is WorkloadPhase.FAILED else \
            f"instance is {instance['status']}"
        return ResourceStatus(phase, detail, price)

    # The workload, over SSH ------------------------------------------------------------------------------

    async def _session(self, instance: dict) -> Session:
        """An SSH session to a reachable instance, its host key checked against (or pinned as) the first one."""
        key, _ = derive_key(self.settings.require_secret_key(), instance["name"])
        pinned = await self.host_keys.get(instance["id"])
        session = await asyncio.to_thread(Session, instance["ip"], self.settings.lambda_ssh_port, key, pinned=pinned)
        if pinned is None and session.seen_host_key is not None:
            stored = await self.host_keys.pin(instance["id"], session.seen_host_key)
            if stored != session.seen_host_key:
                session.__exit__(None, None, None)
                raise ProviderError(f"SSH to {instance['ip']}: the host key differs from the one pinned meanwhile")
        return session

    async def _reachable(self, resource_id: str, credentials: LambdaCredentials) -> dict:
        instance = await self._instance(resource_id, credentials)
        if instance is None or instance["status"] != "active" or not instance.get("ip"):
            raise ProviderTransient("the instance is not active with an address yet")
        return instance

    async def start(self, resource_id: str, request: WorkloadRequest, credentials: LambdaCredentials) -> None:
        """Upload the bundle and start the bootstrap, once sshd answers; tried again with back-off until then."""
        attempts, not_before = self._next_ssh_try.get(resource_id, (0, 0.0))
        if time.monotonic() < not_before:
            raise ProviderTransient(f"SSH not ready after {attempts} tries; next try in "
                                    f"{not_before - time.monotonic():.0f}s")
        instance = await self._reachable(resource_id, credentials)
        try:
            session = await self._session(instance)
        except ProviderTransient:
            self._next_ssh_try[resource_id] = (attempts + 1,
                                               time.monotonic() + min(2.0 ** attempts, SSH_BACKOFF_MAX_S))
            raise
        self._next_ssh_try.pop(resource_id, None)
        env = json.dumps(request.env).encode()
        await asyncio.to_thread(self._start_over_ssh, session, request, env)

    @staticmethod
    def _start_over_ssh(session: Session, request: WorkloadRequest, env: bytes) -> None:
        with session as ssh:
            if ssh.exists(posixpath.join(JOB_DIR, "started")):
                return
            ssh.upload_folder(request.bundle_dir, JOB_DIR)
            ssh.upload_bytes(env, posixpath.join(JOB_DIR, "env.json"))
            code, out = ssh.run(START_COMMAND)
            if code != 0:
                raise ProviderTransient(f"starting the bootstrap over SSH failed ({code}): {out[-500:]}")

    async def collect(self, resource_id: str, request: WorkloadRequest, credentials: LambdaCredentials) -> None:
        instance = await self._reachable(resource_id, credentials)
        session = await self._session(instance)
        await asyncio.to_thread(self._collect_over_ssh, session, request,
                                int(self.settings.max_artifacts_gb * 2**30))

    @staticmethod
    def _collect_over_ssh(session: Session, request: WorkloadRequest, max_bytes: int) -> None:
        folder = request.artifacts_dir
        output = posixpath.join(JOB_DIR, "output")
        with session as ssh:
            tail = ssh.read(posixpath.join(output, LOG), 16000)
            if tail is not None:
                write_atomically(folder / LOG_TAIL, tail)
            have = log_size(folder)  # the whole log comes here as it grows, for the runner to publish
            if fresh := ssh.read_range(posixpath.join(output, LOG), have, LOG_PULL_BYTES):
                append_at(folder, have, fresh)
            progress = ssh.read(posixpath.join(output, PROGRESS), 64_000)
            if progress is not None:
                write_atomically(folder / PROGRESS, progress)
            if ssh.exists(posixpath.join(JOB_DIR, "ended")) and not (folder / RESULT).exists():
                refused = ssh.download_output(output, folder, skip=frozenset({"checkpoints"}), last=RESULT,
                                              max_bytes=max_bytes)
                if refused:
                    write_atomically(folder / "refused.txt", "\n".join(refused).encode())

    async def terminate(self, resource_id: str, credentials: LambdaCredentials) -> None:
        await self.client(credentials).terminate(resource_id)
        self._next_ssh_try.pop(resource_id, None)

    async def tidy(self, credentials: LambdaCredentials, live_names: set[str]) -> None:
        """Delete the SSH keys of workloads that are over (Lambda refuses while an instance still uses one)."""
        client = self.client(credentials)
        in_use = {n for i in await client.instances() if i["status"] != "terminated" for n in i["ssh_key_names"]}
        for key in await client.ssh_keys():
            name = key["name"]
            if parse_resource_name(name, self.installation) and name not in live_names and name not in in_use:
                with contextlib.suppress(ProviderError):
                    await client.delete_ssh_key(key["id"])

    async def list_own(self, credentials: LambdaCredentials) -> list[OwnResource]:
        own, installation = [], self.installation
        for instance in await self.client(credentials).instances():
            parsed = parse_resource_name(instance.get("name") or "", installation)
            if instance["status"] in LIVE and parsed:
                own.append(OwnResource(instance["id"], *parsed))
        return own

"""The part of a cloud provider service that every cloud shares.

It turns a ProvisionJob into a bundle, signed URLs and a resource; polls each live resource and reports
its phase and cost; notices the artifacts coming back and ends the resource; ends resources stuck
provisioning past the limit; and, at start and now and then, terminates resources of this account that no
live workload owns, so that nothing is billed for nothing. Reports are WorkloadReported events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from shared.credential_store import MissingCredentials, load_credentials
from shared.errors import ProviderError
from shared.events import ProvisionJob, WorkloadPhase, WorkloadReported
from shared.jobspec import TrainerResult
from shared.providers import Compute, WorkloadRequest
from shared.settings import Settings
from shared.tokens import job_token

from .bundles import artifacts_dir, read_log_tail, read_result, workload_urls, write_remote_bundle
from .workloads import CloudWorkloads

log = logging.getLogger(__name__)

Report = Callable[[WorkloadReported], Awaitable[None]]
BOOTSTRAP_COMMAND = ["python", "-m", "trainer.bootstrap"]


@dataclass
class CloudRunner:
    compute: Compute
    settings: Settings
    pool: asyncpg.Pool
    report: Report
    provisioning_limit_s: float = 900.0
    poll_interval_s: float = 10.0
    reconcile_every: int = 6

    def __post_init__(self) -> None:
        self.provider = self.compute.name
        self.workloads = CloudWorkloads(self.pool, f"{self.provider.replace('-', '_')}_workloads")

    def _event(self, job_id: str, attempt: int, phase: WorkloadPhase, **kw) -> WorkloadReported:
        return WorkloadReported(job_id=str(job_id), provider=self.provider, attempt=attempt, phase=phase, **kw)

    def _seen(self, row: asyncpg.Record, phase: WorkloadPhase, **kw) -> WorkloadReported:
        return self._event(row["job_id"], row["attempt"], phase, resource_id=row["resource_id"],
                           cost_usd=_cost(row), **kw)

    async def credentials(self, user_id: str):
        private_key = self.settings.secrets_private_key
        if private_key is None:
            raise ProviderError("TUNEFLEET_SECRETS_PRIVATE_KEY is not set for this provider service")
        return await load_credentials(self.pool, private_key.get_secret_value(), user_id, self.provider)

    # Commands -------------------------------------------------------------------------------------------

    async def provision(self, cmd: ProvisionJob) -> None:
        if not await self.workloads.claim(cmd.job_id, cmd.attempt, cmd.user_id):
            return
        if await self.workloads.stop_requested(cmd.job_id):
            await self._end(cmd.job_id, cmd.attempt, WorkloadPhase.STOPPED, message="stopped before it started")
            return
        await self.report(self._event(cmd.job_id, cmd.attempt, WorkloadPhase.PROVISIONING))
        try:
            credentials = await self.credentials(cmd.user_id)
            await asyncio.to_thread(write_remote_bundle, self.settings, cmd,
                                    ingest_token=job_token(self.settings.require_secret_key(), cmd.job_id))
            request = WorkloadRequest(job_id=cmd.job_id, attempt=cmd.attempt, command=BOOTSTRAP_COMMAND,
                                      env={**workload_urls(self.settings, cmd.job_id, cmd.attempt),
                                           "TUNEFLEET_HOLD_AFTER_EXIT": "1"},
                                      options=cmd.provider_options)
            await self.compute.validate(request, credentials)
            provisioned = await self.compute.provision(request, credentials)
        except (ProviderError, MissingCredentials) as exc:
            log.warning("job %s: %s", cmd.job_id, exc.message)
            await self._end(cmd.job_id, cmd.attempt, WorkloadPhase.FAILED, message=exc.message)
            return
        await self.workloads.provisioned(cmd.job_id, cmd.attempt, provisioned.resource_id, provisioned.cost_per_hour)
        log.info("job %s attempt %s: %s %s created", cmd.job_id, cmd.attempt, self.provider, provisioned.resource_id)

    async def terminate(self, job_id: str, user_id: str) -> None:
        for row in await self.workloads.request_stop(job_id, user_id):
            if row["resource_id"]:
                await self._terminate(row)
            await self._end(job_id, row["attempt"], WorkloadPhase.STOPPED, message="stopped on request",
                            cost_usd=_cost(row))

    # Polling --------------------------------------------------------------------------------------------

    async def poll_forever(self) -> None:
        rounds = 0
        while True:
            try:
                if rounds % self.reconcile_every == 0:
                    await self.reconcile()
                await self.poll_once()
            except Exception:
                log.exception("%s poll round failed", self.provider)
            rounds += 1
            await asyncio.sleep(self.poll_interval_s)

    async def poll_once(self) -> None:
        for row in await self.workloads.live():
            if row["resource_id"] is None:
                continue
            try:
                await self._poll(row)
            except ProviderError as exc:
                log.warning("job %s: polling %s failed: %s", row["job_id"], self.provider, exc.message)

    async def _poll(self, row: asyncpg.Record) -> None:
        job_id, attempt = str(row["job_id"]), row["attempt"]
        cost = _cost(row)
        tail = await asyncio.to_thread(read_log_tail, self.settings, job_id, attempt)
        result = await asyncio.to_thread(read_result, self.settings, job_id, attempt)
        if result is not None:
            result = _localised(result, artifacts_dir(self.settings, job_id, attempt))
            await self._terminate(row)
            phase = {"completed": WorkloadPhase.SUCCEEDED, "interrupted": WorkloadPhase.PREEMPTED}.get(
                result.status, WorkloadPhase.FAILED)
            await self._end(job_id, attempt, phase, result=result, message=result.error_message, log_tail=tail,
                            cost_usd=cost)
            return
        status = await self.compute.status(row["resource_id"], await self.credentials(row["user_id"]))
        if status.phase is None:
            await self._end(job_id, attempt, WorkloadPhase.PREEMPTED, log_tail=tail, cost_usd=cost,
                            message=f"the {self.provider} resource went away mid-run ({status.detail})")
        elif status.phase is WorkloadPhase.PROVISIONING and row["age_s"] > self.provisioning_limit_s:
            await self._terminate(row)
            await self._end(job_id, attempt, WorkloadPhase.PREEMPTED, cost_usd=cost,
                            message=f"stuck provisioning for over {self.provisioning_limit_s:.0f}s; terminated")
        elif status.phase is WorkloadPhase.FAILED:
            await self._terminate(row)
            await self._end(job_id, attempt, WorkloadPhase.FAILED, message=status.detail, log_tail=tail,
                            cost_usd=cost)
        elif status.phase is WorkloadPhase.RUNNING:
            if row["state"] != "running":
                await self.workloads.running(job_id, attempt)
            await self.report(self._seen(row, WorkloadPhase.RUNNING, log_tail=tail))
        else:
            await self.report(self._seen(row, WorkloadPhase.PROVISIONING, message=status.detail))

    async def reconcile(self) -> int:
        """Terminate every resource of this provider that no live workload owns. Returns how many."""
        ended = 0
        for user_id in await self.workloads.users():
            try:
                credentials = await self.credentials(user_id)
                resources = await self.compute.list_own(credentials)
            except (ProviderError, MissingCredentials):
                continue
            for resource in resources:
                if not await self.workloads.is_live(resource.job_id, resource.attempt):
                    log.warning("terminating %s %s: no live job owns it", self.provider, resource.resource_id)
                    await self.compute.terminate(resource.resource_id, credentials)
                    ended += 1
        return ended

    async def _terminate(self, row: asyncpg.Record) -> None:
        try:
            await self.compute.terminate(row["resource_id"], await self.credentials(row["user_id"]))
        except (ProviderError, MissingCredentials) as exc:
            log.warning("job %s: terminate failed (%s); reconciliation will retry", row["job_id"], exc.message)

    async def _end(self, job_id: str, attempt: int, phase: WorkloadPhase, **kw) -> None:
        if await self.workloads.ended(job_id, attempt):
            await self.report(self._event(job_id, attempt, phase, **kw))


def _localised(result: TrainerResult, folder: Path) -> TrainerResult:
    """Paths in a remote result point into the container; after the upload the artifacts are in ``folder``."""
    adapter = folder / "adapter"
    return result.model_copy(update={"output_dir": str(folder),
                                     "adapter_path": str(adapter) if adapter.is_dir() else None})


def _cost(row: asyncpg.Record) -> float:
    """Billing runs from creation at the resource's hourly price."""
    return round(row["cost_per_hour"] * float(row["age_s"]) / 3600.0, 6)

"""The local provider service with a workload that ends at once, for ``bench/control_plane.py``.

It is the real provider service (``wire_provider``: the durable consumer, the shared runner with its claim, outbox
and polls) around a compute whose ``provision`` writes the trainer's ``result.json`` (completed) and returns: the
next poll finds the result and reports success, so a job costs the control plane alone. Each provision call is
stamped (job id, wall-clock time) in ``BENCH_PROVISION_LOG``.
"""

from __future__ import annotations

import os
import time

from services.cloud.subscribers import wire_provider
from services.provider_local.compute import LocalCompute
from shared.events import WorkloadPhase
from shared.jobspec import TrainerResult
from shared.providers import Provisioned, ResourceStatus, WorkloadRequest
from shared.service import run_service


class InstantCompute(LocalCompute):
    def __init__(self, settings):
        super().__init__(settings)
        self.stamps = open(os.environ["BENCH_PROVISION_LOG"], "a", buffering=1)  # noqa: SIM115 - the process's

    async def provision(self, request: WorkloadRequest, credentials: None) -> Provisioned:
        self.stamps.write(f"{request.job_id} {time.time():.6f}\n")
        request.artifacts_dir.mkdir(parents=True, exist_ok=True)
        result = TrainerResult(status="completed", output_dir=str(request.artifacts_dir), global_step=1)
        (request.artifacts_dir / "result.json").write_text(result.model_dump_json())
        return Provisioned(f"instant-{request.job_id}", 0.0)

    async def find(self, name: str, credentials: None) -> Provisioned | None:
        return None

    async def status(self, resource_id: str, credentials: None) -> ResourceStatus:
        return ResourceStatus(WorkloadPhase.RUNNING, "ended at once", 0.0)

    async def terminate(self, resource_id: str, credentials: None) -> None:
        return None


if __name__ == "__main__":
    run_service("provider_local", owns=("provider_local",),
                wire=wire_provider(lambda ctx: InstantCompute(ctx.settings), lambda s: s.local_poll_interval_s))

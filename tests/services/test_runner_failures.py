"""Whatever goes wrong after a provider claims an attempt, the attempt ends with a report: a redelivery of the
command would find the claim and do nothing, so an unreported failure would leave the job queued for ever."""

from __future__ import annotations

import uuid

from services.cloud.runner import CloudRunner
from services.provider_local.compute import LocalCompute
from shared.config import DataFormat, TrainingConfig
from shared.events import ProvisionJob, WorkloadPhase


class BrokenCompute(LocalCompute):
    """A provider with a bug: its create raises something that is not a ProviderError."""

    async def provision(self, request, credentials):
        raise KeyError("podFindAndDeployOnDemand")


async def test_an_unexpected_error_after_the_claim_is_reported_once(migrated, pool, tmp_path):
    reports = []

    async def report(event) -> None:
        reports.append(event)

    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello"}\n')
    runner = CloudRunner(BrokenCompute(migrated), migrated, pool, report)
    command = ProvisionJob(job_id=str(uuid.uuid4()), provider="local", user_id="alice",
                           config=TrainingConfig.model_validate({"model": {"base_model": "/models/tiny"},
                                                                 "data": {"dataset_id": "d"}}),
                           dataset_path=str(data), dataset_format=DataFormat.TEXT)
    await runner.provision(command)
    await runner.provision(command)  # the redelivery: claimed and ended already, nothing more
    assert [r.phase for r in reports] == [WorkloadPhase.PROVISIONING, WorkloadPhase.FAILED]
    assert "provisioning failed unexpectedly (KeyError" in reports[-1].message
    assert "local provider's log" in reports[-1].message

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


def provision_command(tmp_path) -> ProvisionJob:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello"}\n')
    return ProvisionJob(job_id=str(uuid.uuid4()), provider="local", user_id="alice",
                        config=TrainingConfig.model_validate({"model": {"base_model": "/models/tiny"},
                                                              "data": {"dataset_id": "d"}}),
                        dataset_path=str(data), dataset_format=DataFormat.TEXT)


async def test_an_unexpected_error_after_the_claim_is_reported_once(migrated, pool, tmp_path):
    reports = []

    async def report(event) -> None:
        reports.append(event)

    runner = CloudRunner(BrokenCompute(migrated), migrated, pool, report)
    command = provision_command(tmp_path)
    await runner.provision(command)
    await runner.provision(command)  # the redelivery: claimed and ended already, nothing more
    assert [r.phase for r in reports] == [WorkloadPhase.PROVISIONING, WorkloadPhase.FAILED]
    assert "provisioning failed unexpectedly (KeyError" in reports[-1].message
    assert "local provider's log" in reports[-1].message


async def test_an_end_that_could_not_be_published_is_published_by_the_next_start(migrated, pool, tmp_path):
    """The end and its report are written in one transaction: NATS away (or the process dying) between the end
    and the publish leaves the report in the outbox, and the provider's next start publishes it."""

    async def nats_away(event) -> None:
        raise ConnectionError("NATS is restarting")

    command = provision_command(tmp_path)
    await CloudRunner(BrokenCompute(migrated), migrated, pool, nats_away).provision(command)
    ended = await pool.fetchrow("SELECT state FROM local_workloads WHERE job_id = $1", command.job_id)
    assert ended["state"] == "ended"  # the attempt is over; without the outbox its end would never be heard of
    reports = []

    async def report(event) -> None:
        reports.append(event)

    restarted = CloudRunner(BrokenCompute(migrated), migrated, pool, report)
    await restarted.recover()
    assert [(r.job_id, r.phase) for r in reports] == [(command.job_id, WorkloadPhase.FAILED)]
    assert await restarted.outbox.unsent() == 0
    await restarted.recover()  # published once
    assert len(reports) == 1


class BrokenPushingCompute(BrokenCompute):
    """The same bug on a provider whose workloads send their reports (heartbeats) to the gateway."""

    remote = True


async def test_a_restart_ships_a_heartbeats_last_log_lines_of_an_attempt_that_just_ended(migrated, pool, tmp_path):
    """A workload's last heartbeat can come after its attempt ended; the runner's start (any replica) pulls it from
    PostgreSQL and publishes its lines."""
    from services.cloud import heartbeats

    async def report(event) -> None:
        pass

    command = provision_command(tmp_path)
    await CloudRunner(BrokenPushingCompute(migrated), migrated, pool, report).provision(command)
    await heartbeats.record(pool, command.job_id, command.attempt, progress={}, log_tail=None, log_offset=0,
                            data=b"[bootstrap] done (trainer exit code 1)\n")
    logged = []

    async def publish_log(event) -> None:
        logged.append(event)

    restarted = CloudRunner(BrokenPushingCompute(migrated), migrated, pool, report, publish_log=publish_log)
    await restarted.recover()
    assert [line for event in logged for line in event.lines] == ["[bootstrap] done (trainer exit code 1)"]


async def test_a_provisioning_whose_provider_died_midway_is_taken_over_within_a_minute(migrated, pool, tmp_path):
    """A provider killed between its claim and its create leaves a claim that is no longer renewed. A redelivery
    of the command meanwhile finds the claim and does nothing; once the claim is a lease old, the next poll of any
    replica provisions the attempt itself, so the job does not wait in queued."""
    reports = []

    async def report(event) -> None:
        reports.append(event)

    command = provision_command(tmp_path)
    runner = CloudRunner(BrokenCompute(migrated), migrated, pool, report)
    assert await runner.workloads.claim(command.job_id, command.attempt, command.user_id,
                                        command.model_dump(mode="json"), runner.provision_lease_s)  # then it died
    await runner.provision(command)  # redelivered to a replica while the claim is fresh
    await runner.poll_once()
    assert reports == []
    await pool.execute("UPDATE local_workloads SET claimed_at = now() - interval '61 seconds' WHERE job_id = $1",
                       command.job_id)
    await runner.poll_once()
    assert [r.phase for r in reports] == [WorkloadPhase.PROVISIONING, WorkloadPhase.FAILED]  # taken over
    assert "KeyError" in reports[-1].message

"""Each provider's states onto TuneFleet's phases: one table each, where the mapping is written once."""

from __future__ import annotations

import pytest

from services.cloud.runner import result_phase
from services.provider_lambda.compute import PHASES as LAMBDA_PHASES
from services.provider_runpod.compute import pod_phase
from shared.events import WorkloadPhase
from shared.jobspec import TrainerResult

P = WorkloadPhase


@pytest.mark.parametrize(("pod", "phase", "uptime"), [
    (None, None, None),
    ({"desiredStatus": "RUNNING", "runtime": None, "costPerHr": 0.69}, P.PROVISIONING, None),  # pulling, host trouble
    ({"desiredStatus": "RUNNING", "runtime": {"uptimeInSeconds": 42}, "costPerHr": 0.69}, P.RUNNING, 42.0),
    ({"desiredStatus": "RUNNING", "runtime": {"uptimeInSeconds": None}}, P.RUNNING, None),
    ({"desiredStatus": "EXITED", "lastStatusChange": "Exited by Runpod"}, None, None),  # stopped or reclaimed
    ({"desiredStatus": "TERMINATED"}, None, None),
    ({"desiredStatus": "DEAD"}, None, None),
    ({"desiredStatus": "CREATED"}, P.PROVISIONING, None),
])
def test_runpod_pods(pod, phase, uptime):
    status = pod_phase(pod)
    assert (status.phase, status.uptime_s) == (phase, uptime)
    if pod and pod.get("costPerHr"):
        assert status.cost_per_hour == pod["costPerHr"]


@pytest.mark.parametrize(("state", "phase"), [
    ("booting", P.PROVISIONING), ("active", P.RUNNING), ("unhealthy", P.FAILED),
    ("terminating", None), ("terminated", None), ("preempted", None),
])
def test_lambda_instances(state, phase):
    assert LAMBDA_PHASES.get(state) is phase  # not in the table: the instance is gone (status() says phase None)


@pytest.mark.parametrize(("status", "phase"), [
    ("completed", P.SUCCEEDED), ("interrupted", P.PREEMPTED), ("failed", P.FAILED),
])
def test_trainer_results(status, phase):
    assert result_phase(TrainerResult(status=status, output_dir="/o")) is phase

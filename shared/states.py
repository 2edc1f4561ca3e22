"""Job states and the transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    BUDGET_EXCEEDED = "budget_exceeded"
    PREEMPTED = "preempted"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.BUDGET_EXCEEDED})

#: The specification's five deployment statuses, for each of TuneFleet's (the README's states table). A job that was
#: stopped, or stopped at its budget, did not complete: the specification has only ``failed`` for that, and
#: ``status`` and ``status_reason`` say which.
DOCUMENTED_STATUS: dict[JobStatus, str] = {
    JobStatus.QUEUED: "queued",
    JobStatus.PROVISIONING: "creating",
    JobStatus.RUNNING: "running",
    JobStatus.PREEMPTED: "creating",  # its machine was taken back; a new one is being made
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "failed",
    JobStatus.BUDGET_EXCEEDED: "failed",
}

_S = JobStatus
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    _S.QUEUED: frozenset({_S.PROVISIONING, _S.RUNNING, _S.FAILED, _S.STOPPED}),
    # → queued: its provider had no machine, and automatic placement moves it to the next offer
    _S.PROVISIONING: frozenset({_S.QUEUED, _S.RUNNING, _S.COMPLETED, _S.FAILED, _S.STOPPED, _S.PREEMPTED,
                                _S.BUDGET_EXCEEDED}),
    _S.RUNNING: frozenset({_S.COMPLETED, _S.FAILED, _S.STOPPED, _S.PREEMPTED, _S.BUDGET_EXCEEDED}),
    _S.PREEMPTED: frozenset({_S.QUEUED, _S.FAILED, _S.STOPPED}),
    _S.COMPLETED: frozenset(),
    _S.FAILED: frozenset(),
    _S.STOPPED: frozenset(),
    _S.BUDGET_EXCEEDED: frozenset(),
}


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    return new in ALLOWED[current]


def catch_up(current: JobStatus, new: JobStatus) -> list[JobStatus] | None:
    """The statuses to pass through to reach ``new`` from ``current``, when a report arrived before the one it
    follows (two scheduler replicas, a redelivery): a workload that reports success was running, so a job still
    ``queued`` goes queued → running → completed. ``[new]`` when the move is direct; None when no report can
    explain it (a terminal job, or going back)."""
    if can_transition(current, new):
        return [new]
    for between in (_S.RUNNING, _S.PROVISIONING):
        if can_transition(current, between) and can_transition(between, new):
            return [between, new]
    return None

"""Scheduler handlers: plain functions of a message and named dependencies."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Protocol

from shared.budget import job_cost
from shared.events import (
    BudgetAlert,
    BudgetAlertKind,
    DeployRequested,
    JobCost,
    JobCostUpdated,
    JobLogAppended,
    JobStatusChanged,
    LogLine,
    Message,
    Placement,
    PlacementRejection,
    ProvisionJob,
    StopRequested,
    TerminateJob,
    WorkloadLogged,
    WorkloadPhase,
    WorkloadReported,
)
from shared.ids import derived_id
from shared.jobspec import TrainerResult
from shared.states import JobStatus, catch_up

from .repository import JobLogs, JobRepository, Transition

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
#: How the reason of a job ended at its max_duration_hours begins.
DURATION_REASON = "max_duration_hours reached"

PHASE_STATUS: dict[WorkloadPhase, JobStatus] = {
    WorkloadPhase.PROVISIONING: JobStatus.PROVISIONING,
    WorkloadPhase.RUNNING: JobStatus.RUNNING,
    WorkloadPhase.SUCCEEDED: JobStatus.COMPLETED,
    WorkloadPhase.FAILED: JobStatus.FAILED,
    WorkloadPhase.STOPPED: JobStatus.STOPPED,
    WorkloadPhase.PREEMPTED: JobStatus.PREEMPTED,
}


class Publisher(Protocol):
    async def publish(self, message: Message) -> None: ...

    async def announce(self, message: Message) -> None: ...


def _cost(job) -> JobCost:
    return job_cost(cost_per_hour=job["cost_per_hour"], cost_so_far=job["cost_usd"] or 0.0,
                    budget_limit=job["budget_limit_usd"], progress=job["progress"], running_since=job["started_at"],
                    now=datetime.now(UTC))


async def _announce(t: Transition, *, jobs: JobRepository, bus: Publisher) -> None:
    job = await jobs.get(t.job_id)
    terminal = t.status.is_terminal
    await bus.publish(JobStatusChanged(
        event_id=t.status_event_id, job_id=t.job_id, user_id=job["user_id"], provider=job["provider"],
        previous=t.previous, status=t.status, reason=t.reason,
        config=job["config"] if terminal else None,
        dataset_rows=job["dataset_rows"] if terminal else None,
        result=TrainerResult.model_validate(job["result"]) if terminal and job["result"] else None,
        cost_usd=job["cost_usd"], cost=_cost(job), notify_email=job["notify_email"] if terminal else None,
    ))


async def _provision(job_id: str, *, jobs: JobRepository, bus: Publisher) -> None:
    """Command the provider; a later attempt resumes from the checkpoint the last one reported, if any."""
    job = await jobs.get(job_id)
    resume = (job["result"] or {}).get("checkpoint_path") if job["attempt"] > 1 else None
    await bus.publish(ProvisionJob(
        event_id=derived_id(job_id, "provision", job["attempt"]), job_id=job_id, provider=job["provider"],
        user_id=job["user_id"], attempt=job["attempt"], config=job["config"], dataset_path=job["dataset_path"],
        dataset_format=job["dataset_format"], provider_options=job["provider_options"],
        resume_from_checkpoint=resume,
    ))


async def handle_deploy_requested(cmd: DeployRequested, *, jobs: JobRepository, bus: Publisher) -> None:
    transition = await jobs.create(cmd)
    await _announce(transition, jobs=jobs, bus=bus)
    job = await jobs.get(cmd.job_id)
    if JobStatus(job["status"]) is not JobStatus.QUEUED:
        return
    if job["stop_requested"]:  # its stop came first: it never runs
        t = await jobs.transition(cmd.job_id, JobStatus.STOPPED, source_event_id=derived_id(cmd.job_id, "early-stop"),
                                  occurred_at=cmd.occurred_at, reason="stopped before it was scheduled")
        if t is not None:
            await _announce(t, jobs=jobs, bus=bus)
        return
    await _provision(cmd.job_id, jobs=jobs, bus=bus)


def _implied_id(event_id: str, status: JobStatus) -> str:
    return derived_id(event_id, "implied", status)


async def _announce_recorded(source_event_id: str, *, jobs: JobRepository, bus: Publisher) -> Transition | None:
    """A message delivered again after its handler had recorded its transition and died before publishing what
    followed: publish the status events again (JetStream drops a copy of one that did get out) and return the
    transition, so the caller can redo its follow-ups. None for a message not applied before."""
    implied = [_implied_id(source_event_id, s) for s in JobStatus]
    recorded = await jobs.recorded([*implied, source_event_id])
    main = next((t for source, t in recorded if source == source_event_id), None)
    if main is None:
        return None
    for _, t in recorded:
        await _announce(t, jobs=jobs, bus=bus)
    return main


async def handle_stop_requested(cmd: StopRequested, *, jobs: JobRepository, bus: Publisher) -> None:
    job = await jobs.get(cmd.job_id)
    if job is None:  # its deploy has not arrived yet (delayed, or published again): the job will start stopped
        await jobs.remember_stop(cmd.job_id, cmd.user_id, cmd.reason)
        return
    if job["user_id"] != cmd.user_id:  # anyone who can publish on the bus could otherwise stop anyone's job
        log.warning("ignoring a stop of job %s sent for user %r, not its owner", cmd.job_id, cmd.user_id)
        return
    redone = await _announce_recorded(cmd.event_id, jobs=jobs, bus=bus)
    if redone is None:
        if JobStatus(job["status"]).is_terminal:
            return
        await jobs.mark_stop_requested(cmd.job_id)
        if JobStatus(job["status"]) in (JobStatus.QUEUED, JobStatus.PREEMPTED):
            t = await jobs.transition(cmd.job_id, JobStatus.STOPPED, source_event_id=cmd.event_id,
                                      occurred_at=cmd.occurred_at, reason=cmd.reason)
            if t is not None:
                await _announce(t, jobs=jobs, bus=bus)
    # A provision command may already be on its way: the provider is told to end whatever it started.
    await bus.publish(TerminateJob(event_id=derived_id(cmd.job_id, "terminate", cmd.event_id),
                                   job_id=cmd.job_id, provider=job["provider"], user_id=job["user_id"],
                                   reason=cmd.reason))


async def handle_workload_reported(evt: WorkloadReported, *, jobs: JobRepository, bus: Publisher) -> None:
    job = await jobs.get(evt.job_id)
    if job is None:
        log.warning("report for unknown job %s from %s", evt.job_id, evt.provider)
        return
    # Where a report changes nothing, it may be a redelivery whose handler recorded its change and died before
    # publishing what followed: _redo then publishes it (the lookup is only paid on those paths).
    if evt.attempt != job["attempt"]:
        if not await _redo(evt, job, jobs=jobs, bus=bus):
            log.info("ignoring report of attempt %s for job %s (now at %s)", evt.attempt, evt.job_id, job["attempt"])
        return
    live = evt.phase in (WorkloadPhase.PROVISIONING, WorkloadPhase.RUNNING)
    await jobs.observe(evt.job_id, log_tail=evt.log_tail, cost_usd=evt.cost_usd, resource_id=evt.resource_id,
                       cost_per_hour=evt.cost_per_hour, progress=evt.progress, live=live)
    current = JobStatus(job["status"])
    if current.is_terminal:
        if await _redo(evt, job, jobs=jobs, bus=bus):
            return
        if evt.phase in (WorkloadPhase.PROVISIONING, WorkloadPhase.RUNNING):
            await bus.publish(TerminateJob(event_id=derived_id(evt.job_id, "terminate-late", evt.event_id),
                                           job_id=evt.job_id, provider=evt.provider, user_id=job["user_id"],
                                           reason=f"job already {current.value}"))
        return
    if evt.phase in (WorkloadPhase.PREEMPTED, WorkloadPhase.FAILED) and not job["stop_requested"]:
        await jobs.record_error(evt)  # kept whatever follows (a retry, or the end)
    if evt.no_capacity and not job["stop_requested"] and await _place_elsewhere(evt, job, jobs=jobs, bus=bus):
        return
    if live:
        await _tell_cost(evt, job, jobs=jobs, bus=bus)
    if await _enforce_budget(evt, job, jobs=jobs, bus=bus) or (live and await _enforce_duration(evt, job, jobs=jobs,
                                                                                                 bus=bus)):
        return
    new = PHASE_STATUS[evt.phase]
    if new is JobStatus.FAILED and job["stop_requested"]:
        new = JobStatus.STOPPED
    path = catch_up(current, new) if new is not current else None
    if path is None:
        if not await _redo(evt, job, jobs=jobs, bus=bus) and new is not current:
            log.info("job %s: %s -> %s not allowed, ignored", evt.job_id, current.value, new.value)
        return
    if evt.phase not in (WorkloadPhase.PROVISIONING, WorkloadPhase.RUNNING):
        # an end may imply states; one recorded before a crash is announced again (it is no longer on the path)
        for _, t in await jobs.recorded([_implied_id(evt.event_id, s) for s in JobStatus]):
            await _announce(t, jobs=jobs, bus=bus)
    for implied in path[:-1]:  # a report that overtook the ones before it: their states happened too
        t = await jobs.transition(evt.job_id, implied, source_event_id=_implied_id(evt.event_id, implied),
                                  occurred_at=evt.occurred_at, reason=f"implied by a later {evt.phase.value} report")
        if t is not None:
            await _announce(t, jobs=jobs, bus=bus)
    reason = evt.message or (evt.result.error_message if evt.result else None)
    result = evt.result.model_dump(mode="json") if evt.result else None
    t = await jobs.transition(evt.job_id, new, source_event_id=evt.event_id, occurred_at=evt.occurred_at,
                              reason=reason, result=result)
    if t is None:
        log.info("job %s: %s -> %s not allowed, ignored", evt.job_id, current.value, new.value)
        return
    await _announce(t, jobs=jobs, bus=bus)
    await _follow_up(evt, t, job, jobs=jobs, bus=bus)


async def _redo(evt: WorkloadReported, job, *, jobs: JobRepository, bus: Publisher) -> bool:
    """Publish again what this report's recorded transition set going; False when it recorded none."""
    redone = await _announce_recorded(evt.event_id, jobs=jobs, bus=bus)
    if redone is None:
        return False
    await _follow_up(evt, redone, job, jobs=jobs, bus=bus)
    return True


async def _follow_up(evt: WorkloadReported, t: Transition, job, *, jobs: JobRepository, bus: Publisher) -> None:
    """What a recorded transition sets going: a budget or duration stop ends the resource; a preemption retries;
    a move to another offer provisions there."""
    if t.status is JobStatus.BUDGET_EXCEEDED:
        await _terminate(evt, job, t.reason or "budget reached", "terminate-budget", bus=bus)
    elif t.status is JobStatus.STOPPED and (t.reason or "").startswith(DURATION_REASON):
        await _terminate(evt, job, t.reason, "terminate-duration", bus=bus)
    elif t.status is JobStatus.QUEUED:  # moved to another offer of its placement
        await _provision(evt.job_id, jobs=jobs, bus=bus)
    elif t.status is JobStatus.PREEMPTED:
        await _requeue(evt, job_attempt=evt.attempt, stop_requested=job["stop_requested"], jobs=jobs, bus=bus)


def _spent(evt: WorkloadReported, job) -> float | None:
    """The job's cost as of this report: its attempt's, and what the attempts before it cost."""
    return None if evt.cost_usd is None else job["attempts_cost_usd"] + evt.cost_usd


async def _tell_cost(evt: WorkloadReported, job, *, jobs: JobRepository, bus: Publisher) -> None:
    """Publish the job's cost as this report has it, and each budget alert it crossed (once per kind): at
    ``alert_threshold`` percent of the budget, and at the budget itself when the job is not stopped there."""
    spent = _spent(evt, job)
    fresh = dict(job) | {"cost_usd": spent if spent is not None else job["cost_usd"],
                         "cost_per_hour": evt.cost_per_hour if evt.cost_per_hour is not None else job["cost_per_hour"],
                         "progress": evt.progress if evt.progress is not None else job["progress"]}
    cost = _cost(fresh)
    try:  # live figures for whoever listens; the next report sends them again
        await bus.announce(JobCostUpdated(job_id=evt.job_id, user_id=job["user_id"], provider=job["provider"],
                                          cost=cost))
    except Exception as exc:
        log.info("job %s: publishing its cost failed (%s)", evt.job_id, exc)
    budget, threshold = job["budget_limit_usd"], job["alert_threshold_pct"]
    if budget is None or spent is None:
        return
    crossed = []
    if threshold is not None and spent >= budget * threshold / 100.0 and job["threshold_alerted_at"] is None:
        crossed.append(BudgetAlertKind.THRESHOLD)
    if not job["auto_stop_on_budget"] and spent >= budget and job["limit_alerted_at"] is None:
        crossed.append(BudgetAlertKind.LIMIT_REACHED)
    for kind in crossed:
        # published before it is marked, under an id of its own: a crash in between publishes the same message
        # again, which JetStream (and every subscriber that keys on event_id) drops
        await bus.publish(BudgetAlert(
            event_id=derived_id(evt.job_id, "budget-alert", kind), job_id=evt.job_id, user_id=job["user_id"],
            provider=job["provider"], kind=kind, threshold_pct=threshold, cost=cost,
            auto_stop_on_budget=job["auto_stop_on_budget"], notify_email=job["notify_email"], job_name=job["name"]))
        await jobs.mark_alerted(evt.job_id, kind.value)


async def _enforce_duration(evt: WorkloadReported, job, *, jobs: JobRepository, bus: Publisher) -> bool:
    """End a job that has run for its ``max_duration_hours`` (from when its machine was first asked for)."""
    limit, age = job["max_duration_hours"], job["clock_age_s"]
    if limit is None or age is None or age < limit * 3600.0:
        return False
    reason = f"{DURATION_REASON}: it ran {age / 3600.0:.3g} h of the {limit:g} h allowed"
    return await _end_run(evt, job, JobStatus.STOPPED, reason, "terminate-duration", jobs=jobs, bus=bus)


async def _end_run(evt: WorkloadReported, job, status: JobStatus, reason: str, why: str, *, jobs: JobRepository,
                   bus: Publisher) -> bool:
    """Record that the job ended (over budget, past its duration) on this report, and end its resource."""
    t = await jobs.transition(evt.job_id, status, source_event_id=evt.event_id, occurred_at=evt.occurred_at,
                              reason=reason)
    if t is None:
        return False
    await _announce(t, jobs=jobs, bus=bus)
    await _terminate(evt, job, reason, why, bus=bus)
    return True


async def _place_elsewhere(evt: WorkloadReported, job, *, jobs: JobRepository, bus: Publisher) -> bool:
    """A job placed automatically whose provider had no machine for it moves to the next offer of its placement
    (a new attempt there). False when it was not placed automatically, or no offer is left."""
    if job["placement"] is None:
        return False
    placement = Placement.model_validate(job["placement"])
    if placement.chosen + 1 >= len(placement.offers):
        return False
    if await _redo(evt, job, jobs=jobs, bus=bus):  # moved before a crash: provision there
        return True
    tried, following = placement.offers[placement.chosen], placement.offers[placement.chosen + 1]
    said = evt.message or "no capacity"
    reason = (f"{tried.provider} had no capacity for {tried.gpu} ({said}); placed on {following.provider} "
              f"{following.gpu} instead")
    moved = placement.model_copy(update={"chosen": placement.chosen + 1, "rejected": [
        *placement.rejected, PlacementRejection(provider=tried.provider, gpu=tried.gpu,
                                                reason=f"no capacity when asked: {said}")]})
    current = JobStatus(job["status"])
    if current is JobStatus.QUEUED:  # its provisioning report was lost: it did ask for a machine
        t = await jobs.transition(evt.job_id, JobStatus.PROVISIONING, occurred_at=evt.occurred_at,
                                  source_event_id=_implied_id(evt.event_id, JobStatus.PROVISIONING),
                                  reason=f"implied by a later {evt.phase.value} report")
        if t is not None:
            await _announce(t, jobs=jobs, bus=bus)
    t = await jobs.transition(evt.job_id, JobStatus.QUEUED, source_event_id=evt.event_id,
                              occurred_at=evt.occurred_at, reason=reason, bump_attempt=True,
                              placed=(following.provider, following.provider_options, moved.model_dump(mode="json")))
    if t is None:
        return False
    await _announce(t, jobs=jobs, bus=bus)
    await _provision(evt.job_id, jobs=jobs, bus=bus)
    return True


async def _enforce_budget(evt: WorkloadReported, job, *, jobs: JobRepository, bus: Publisher) -> bool:
    """Stop a job whose reported cost reached its budget, unless it only alerts there. True when it stopped it."""
    budget, spent = job["budget_limit_usd"], _spent(evt, job)
    if budget is None or spent is None or spent < budget or not job["auto_stop_on_budget"]:
        return False
    if evt.phase not in (WorkloadPhase.PROVISIONING, WorkloadPhase.RUNNING):
        return False  # the workload already ended on its own; record how it ended instead
    reason = f"cost ${spent:.2f} reached the budget of ${budget:.2f}"
    return await _end_run(evt, job, JobStatus.BUDGET_EXCEEDED, reason, "terminate-budget", jobs=jobs, bus=bus)


async def _terminate(evt: WorkloadReported, job, reason: str, why: str, *, bus: Publisher) -> None:
    await bus.publish(TerminateJob(event_id=derived_id(evt.job_id, why), job_id=evt.job_id,
                                   provider=evt.provider, user_id=job["user_id"], reason=reason))


async def _requeue(evt: WorkloadReported, *, job_attempt: int, stop_requested: bool,
                   jobs: JobRepository, bus: Publisher) -> None:
    """A preempted job goes back to the queue for another attempt, up to MAX_ATTEMPTS."""
    if stop_requested:
        new, reason, bump = JobStatus.STOPPED, "stopped while preempted", False
    elif job_attempt >= MAX_ATTEMPTS:
        last = f": {evt.message}" if evt.message else ""
        new, reason, bump = JobStatus.FAILED, f"preempted {job_attempt} times; giving up (last{last})", False
    else:
        new, reason, bump = JobStatus.QUEUED, f"retrying after preemption (attempt {job_attempt + 1})", True
    t = await jobs.transition(evt.job_id, new, source_event_id=derived_id(evt.event_id, "requeue"),
                              occurred_at=evt.occurred_at, reason=reason, bump_attempt=bump)
    if t is None:
        return
    await _announce(t, jobs=jobs, bus=bus)
    if t.status is JobStatus.QUEUED:
        await _provision(evt.job_id, jobs=jobs, bus=bus)


async def handle_workload_logged(evt: WorkloadLogged, *, logs: JobLogs, bus: Publisher) -> None:
    """Keep each line of the log once, and tell live viewers of those it had not seen, in one message."""
    stored = await logs.append(evt.job_id, evt.attempt, evt.first_line, evt.lines)
    if not stored:
        return
    try:  # the lines are stored; a viewer that misses them reads them with GET .../logs
        await bus.announce(JobLogAppended(job_id=evt.job_id, lines=[
            LogLine(attempt=evt.attempt, number=number, text=text) for number, text in stored]))
    except Exception as exc:
        log.info("job %s: publishing its new log lines failed (%s)", evt.job_id, exc)

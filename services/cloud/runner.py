"""The part of a provider service that every provider shares, this machine's included.

It turns a ProvisionJob into a bundle and a resource (looked up by name before any create, so that one attempt
never leaves two machines); polls every live resource concurrently; starts workloads that the machine does not
start itself; reads what each workload reports (its end, its log tail, its progress) and maps the trainer's
result onto a phase, in one place; times provisioning from the last entry into that state; notices restarted
containers and stalled runs; and, at start and now and then, terminates resources of an account that no live
workload owns. Reports are WorkloadReported events; every line of a workload's log is published once besides, as
WorkloadLogged events (``joblog`` says where each provider's log comes from).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from shared.config import JUDGE_KEY_ENV, Method
from shared.credential_store import MissingCredentials, load_credentials
from shared.errors import NoCapacity, ProviderError, ProviderTransient
from shared.events import Message, ProvisionJob, WorkloadLogged, WorkloadPhase, WorkloadReported
from shared.ids import derived_id
from shared.jobspec import TrainerResult
from shared.outbox import Outbox
from shared.providers import Compute, Provisioned, ResourceStatus, WorkloadRequest, resource_name
from shared.settings import Settings
from shared.tokens import job_token

from . import heartbeats
from .bundles import artifacts_dir, bundle_dir, read_log_tail, read_progress, read_result, workload_env, write_bundle
from .checkpoints import latest_checkpoint
from .joblog import read_lines
from .output import fetch_pushed_output, keep_output
from .spool import replay_spool
from .workloads import CloudWorkloads

log = logging.getLogger(__name__)

Report = Callable[[WorkloadReported], Awaitable[None]]
Publish = Callable[[Message], Awaitable[None]]
#: Log batches published for one attempt in one poll at most (the rest follows at the next).
MAX_LOG_BATCHES = 8
#: How long after its end an attempt's log is still read: lines written as it ended (a trainer exiting, the
#: bootstrap's last heartbeat) arrive after the end was reported.
LOG_AFTER_END_S = 600.0
#: At start, the logs of attempts that ended this long ago are read once more (the service may have been away).
LOG_RECOVER_S = 7 * 24 * 3600.0
#: Creates tried for one attempt; a lost answer is looked up by name before the next.
CREATE_ATTEMPTS = 4
#: Polls that may fail to bring a finished workload's output (a download hiccup) before it fails without it.
FINISHED_COLLECT_TRIES = 10
#: The trainer's result status → the workload's phase: the one mapping every provider uses.
RESULT_PHASE = {"completed": WorkloadPhase.SUCCEEDED, "interrupted": WorkloadPhase.PREEMPTED}


def result_phase(result: TrainerResult) -> WorkloadPhase:
    return RESULT_PHASE.get(result.status, WorkloadPhase.FAILED)


@dataclass
class CloudRunner:
    compute: Compute
    settings: Settings
    pool: asyncpg.Pool
    report: Report
    poll_interval_s: float = 10.0
    reconcile_every: int = 6
    report_every_s: float = 10.0
    #: A claim not renewed for this long without a recorded resource is taken over: its provisioning died midway
    #: (a live one renews its claim every quarter of this, however long its bundle or uploads take).
    provision_lease_s: float = 60.0
    #: Where each workload's log lines go (``WorkloadLogged``); None: they are not published.
    publish_log: Publish | None = None

    def __post_init__(self) -> None:
        self.provider = self.compute.name
        table = self.provider.replace("-", "_")
        self.workloads = CloudWorkloads(self.pool, f"{table}_workloads")
        self.outbox = Outbox(self.pool, f"{table}_outbox")
        self._limit = asyncio.Semaphore(self.settings.poll_concurrency)
        self._collect_failures: dict[tuple[str, int], int] = {}

    def _collect_failed(self, job_id: str, attempt: int) -> bool:
        """Count a failed collect of a finished workload; True while it may be tried again."""
        key = (job_id, attempt)
        self._collect_failures[key] = self._collect_failures.get(key, 0) + 1
        return self._collect_failures[key] <= FINISHED_COLLECT_TRIES

    def _event(self, job_id: str, attempt: int, phase: WorkloadPhase, **kw) -> WorkloadReported:
        return WorkloadReported(job_id=str(job_id), provider=self.provider, attempt=attempt, phase=phase, **kw)

    async def credentials(self, user_id: str):
        if not self.compute.needs_credentials:
            return None
        return await self.stored(user_id, self.compute.credentials_name or self.provider)

    async def stored(self, user_id: str, name: str):
        private_key = self.settings.secrets_private_key
        if private_key is None:
            raise ProviderError("TUNEFLEET_SECRETS_PRIVATE_KEY is not set for this provider service")
        return await load_credentials(self.pool, private_key.get_secret_value(), user_id, name)

    async def _secret_env(self, cmd: ProvisionJob) -> dict[str, str]:
        """The user's stored secrets that this job's configuration names, as the workload reads them: these reach
        this workload only, never a server's environment."""
        rlhf = cmd.config.training.rlhf
        if cmd.config.training.method is not Method.RLHF or not rlhf.judge_url or not rlhf.judge_api_key_secret:
            return {}
        judge = await self.stored(cmd.user_id, rlhf.judge_api_key_secret)
        return {JUDGE_KEY_ENV: judge.api_key.get_secret_value()}

    async def _request(self, job_id: str, attempt: int, options: dict | None = None,
                       command: ProvisionJob | None = None, user_id: str = "") -> WorkloadRequest:
        # The environment is for creating or starting the workload (``command`` given), never needed by a poll:
        # it is not built there, so a poll signs no URL and lists no checkpoint.
        env = await self._secret_env(command) if command is not None else {}
        if self.compute.remote and command is not None:
            env.update(workload_env(self.settings, job_id, attempt, push=self.compute.pushes(options or {}),
                                    resume=await latest_checkpoint(self.settings, job_id) is not None))
        return WorkloadRequest(job_id=job_id, attempt=attempt, installation=self.compute.installation, env=env,
                               options=options or {}, user_id=command.user_id if command else user_id,
                               bundle_dir=bundle_dir(self.settings, job_id, attempt),
                               artifacts_dir=artifacts_dir(self.settings, job_id, attempt))

    # Commands -------------------------------------------------------------------------------------------

    async def provision(self, cmd: ProvisionJob) -> None:
        if not await self.workloads.claim(cmd.job_id, cmd.attempt, cmd.user_id, cmd.model_dump(mode="json"),
                                          self.provision_lease_s):
            return
        if await self.workloads.stop_requested(cmd.job_id):
            await self._end(cmd.job_id, cmd.attempt, WorkloadPhase.STOPPED, message="stopped before it started")
            return
        try:  # best effort: polls report provisioning too, and a redelivery would find the claim and stop here
            await self.report(self._event(cmd.job_id, cmd.attempt, WorkloadPhase.PROVISIONING))
        except Exception as exc:
            log.warning("job %s: reporting provisioning failed (%s); polls will report it", cmd.job_id, exc)
        renewing = asyncio.create_task(self._renew_claim(cmd.job_id, cmd.attempt))
        try:
            credentials = await self.credentials(cmd.user_id)
            await asyncio.to_thread(
                write_bundle, self.settings, cmd, remote=self.compute.remote,
                ingest_token=job_token(self.settings.require_secret_key(), cmd.job_id),
                resume_from=None if self.compute.remote else cmd.resume_from_checkpoint,
                offline=self.compute.offline(cmd.provider_options))
            request = await self._request(cmd.job_id, cmd.attempt, cmd.provider_options, cmd)
            await self.compute.validate(request, credentials)
            provisioned = await self._create(request, credentials)
        except Exception as exc:  # every failure after the claim is reported: a redelivery would find the claim
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ProviderError | MissingCredentials | OSError):
                log.warning("job %s: %s", cmd.job_id, message)
            else:
                log.exception("job %s: provisioning failed unexpectedly", cmd.job_id)
                message = f"provisioning failed unexpectedly ({message}); see the {self.provider} provider's log"
            await self._end(cmd.job_id, cmd.attempt, WorkloadPhase.FAILED, message=message,
                            no_capacity=isinstance(exc, NoCapacity))
            return
        finally:
            renewing.cancel()
        await self.workloads.provisioned(cmd.job_id, cmd.attempt, provisioned.resource_id, provisioned.cost_per_hour)
        log.info("job %s attempt %s: %s %s created", cmd.job_id, cmd.attempt, self.provider, provisioned.resource_id)

    async def _renew_claim(self, job_id: str, attempt: int) -> None:
        """While this process provisions an attempt (a bundle, a wheelhouse, uploads: it may outlast the lease),
        keep its claim fresh, so that no poll takes it over as abandoned and creates it a second time."""
        while True:
            await asyncio.sleep(self.provision_lease_s / 4)
            try:
                await self.workloads.renew_claim(job_id, attempt)
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("job %s: renewing the provisioning claim failed: %s", job_id, exc)

    async def _create(self, request: WorkloadRequest, credentials) -> Provisioned:
        """Create the resource once; after an answer that may have been lost, look it up before creating again."""
        last: ProviderTransient | None = None
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            found = await self.compute.find(request.name, credentials)
            if found is not None:
                if last is not None:
                    log.info("%s %s exists although its create answered %s", self.provider, request.name,
                             last.message)
                return found
            try:
                return await self.compute.provision(request, credentials)
            except ProviderTransient as exc:
                last = exc
                await asyncio.sleep(exc.retry_after if exc.retry_after is not None else min(2.0 ** attempt, 30.0))
        raise last or ProviderError("create failed")

    async def terminate(self, job_id: str, user_id: str) -> None:
        for row in await self.workloads.request_stop(job_id, user_id):
            if row["resource_id"]:
                await self._terminate(row)
            await self._end(job_id, row["attempt"], WorkloadPhase.STOPPED, message="stopped on request",
                            **_costs(row))

    # Polling --------------------------------------------------------------------------------------------

    async def recover(self) -> None:
        """At start: publish the ends that a stop or crash left unsent, and the log lines of the attempts that ended
        while this service was away."""
        await self.outbox.relay(self.report, older_than_s=0)
        await self._ship_ended_logs(LOG_RECOVER_S)

    async def poll_forever(self) -> None:
        rounds = 0
        while True:
            try:
                await self.outbox.relay(self.report)
                await self._deliver_pending_spools()
                if self.compute.reconciles and rounds % self.reconcile_every == 0:
                    await self.reconcile()
                await self.poll_once()
            except Exception:
                log.exception("%s poll round failed", self.provider)
            rounds += 1
            await asyncio.sleep(self.poll_interval_s)

    async def poll_once(self) -> None:
        """Poll every live resource, a bounded number at a time: one slow machine delays no other."""
        for row in await self.workloads.abandoned(self.provision_lease_s):
            log.warning("job %s attempt %s: taking over a provisioning that stopped midway", row["job_id"],
                        row["attempt"])
            await self.provision(ProvisionJob.model_validate(row["command"]))
        rows = [r for r in await self.workloads.live() if r["resource_id"]]
        await asyncio.gather(*(self._guarded_poll(row) for row in rows))
        await self._ship_ended_logs(LOG_AFTER_END_S)

    async def _guarded_poll(self, row: asyncpg.Record) -> None:
        async with self._limit:
            try:
                await self._poll(row)
            except (ProviderError, MissingCredentials) as exc:
                log.warning("job %s: polling %s failed: %s", row["job_id"], self.provider, exc.message)
            except Exception:
                log.exception("job %s: polling %s failed", row["job_id"], self.provider)

    async def _poll(self, row: asyncpg.Record) -> None:
        job_id, attempt = str(row["job_id"]), row["attempt"]
        credentials = await self.credentials(row["user_id"])
        status = await self.compute.status(row["resource_id"], credentials)
        if status.cost_per_hour is not None and status.cost_per_hour != row["cost_per_hour"]:
            await self.workloads.reprice(job_id, attempt, status.cost_per_hour)
            row = await self.workloads.get(job_id, attempt) or row
        starting = status.phase is WorkloadPhase.RUNNING and not row["workload_started"]
        command = ProvisionJob.model_validate(row["command"]) if starting else None
        options = (row["command"] or {}).get("provider_options") or {}
        request = await self._request(job_id, attempt, options, command, user_id=row["user_id"])
        if starting:
            status = await self._start(row, request, credentials, status)
        folder = request.artifacts_dir
        if status.phase is WorkloadPhase.RUNNING or status.finished:
            try:
                await self.compute.collect(row["resource_id"], request, credentials)
            except ProviderTransient as exc:
                log.info("job %s: collecting reports failed for now: %s", job_id, exc.message)
                if status.finished and self._collect_failed(job_id, attempt):
                    return  # its output is all there is: try again at the next poll, not fail without it
            except ProviderError as exc:
                await self._stop(row, WorkloadPhase.FAILED, exc.message, await asyncio.to_thread(read_log_tail, folder))
                return
        if self._pushes(row):
            await self._pull_heartbeats(job_id, attempt)  # any gateway replica took them
            await fetch_pushed_output(self.settings, job_id, attempt)  # put in the bucket, on a store that presigns
        await self._ship_log(row)
        result = await asyncio.to_thread(read_result, folder)
        if result is not None:
            await self._finish(row, result, request, credentials)
            return
        tail = await asyncio.to_thread(read_log_tail, folder)
        if status.finished:
            await self._stop(row, WorkloadPhase.FAILED, status.detail or f"the {self.provider} workload ended "
                                                                          "without a result", tail)
        elif status.phase is None:
            await self._end(job_id, attempt, WorkloadPhase.PREEMPTED, log_tail=tail, **_costs(row),
                            message=f"the {self.provider} resource went away mid-run ({status.detail})")
        elif status.phase is WorkloadPhase.FAILED:
            await self._stop(row, WorkloadPhase.FAILED, status.detail, tail)
        elif status.phase is WorkloadPhase.PROVISIONING:
            await self._provisioning(row, status)
        else:
            await self._running(row, status, folder, tail)

    async def _start(self, row, request: WorkloadRequest, credentials, status: ResourceStatus) -> ResourceStatus:
        try:
            await self.compute.start(row["resource_id"], request, credentials)
        except ProviderTransient as exc:
            return ResourceStatus(WorkloadPhase.PROVISIONING, f"up, but not reachable yet: {exc.message}",
                                  status.cost_per_hour)
        except ProviderError as exc:
            return ResourceStatus(WorkloadPhase.FAILED, exc.message, status.cost_per_hour)
        await self.workloads.started(str(row["job_id"]), row["attempt"])
        return status

    async def _provisioning(self, row: asyncpg.Record, status: ResourceStatus) -> None:
        job_id, attempt = str(row["job_id"]), row["attempt"]
        limit = self.settings.provisioning_timeout_s
        waited = row["state_age_s"] if row["state"] == "provisioning" else 0.0
        if waited > limit:
            await self._stop(row, WorkloadPhase.PREEMPTED, f"stuck provisioning for over {limit:.0f}s "
                                                           f"({status.detail}); terminated", None)
            return
        await self.workloads.enter(job_id, attempt, "provisioning")
        await self._report_now(row, WorkloadPhase.PROVISIONING, message=status.detail)

    async def _running(self, row: asyncpg.Record, status: ResourceStatus, folder: Path, tail: str | None) -> None:
        job_id, attempt = str(row["job_id"]), row["attempt"]
        await self.workloads.enter(job_id, attempt, "running")
        if status.uptime_s is not None:
            restarted = row["last_uptime_s"] is not None and status.uptime_s + 1.0 < row["last_uptime_s"]
            await self.workloads.saw_uptime(job_id, attempt, status.uptime_s, restarted)
            restarts = row["restarts"] + int(restarted)
            if restarted:
                log.warning("job %s attempt %s: the container restarted (%s so far)", job_id, attempt, restarts)
            if restarts >= self.settings.max_container_restarts:
                await self._stop(row, WorkloadPhase.FAILED, f"the container exited and was restarted {restarts} "
                                                            f"times without finishing; its log ends:\n{tail or ''}",
                                 tail)
                return
        progress = await asyncio.to_thread(read_progress, folder)
        if progress and progress.get("phase") == "training" and isinstance(progress.get("beats"), int):
            beats = progress["beats"]
            await self.workloads.saw_progress(job_id, attempt, beats)
            stalled_for = row["progress_age_s"] if row["last_progress"] == beats else 0.0
            if stalled_for and stalled_for > self.settings.stall_timeout_s:
                await self._stop(row, WorkloadPhase.PREEMPTED,
                                 f"stalled: no training progress for over {self.settings.stall_timeout_s:.0f}s "
                                 f"(at step {progress.get('step')}); terminated", tail)
                return
        await self._report_now(row, WorkloadPhase.RUNNING, log_tail=tail, progress=_fraction(progress))

    async def _report_now(self, row: asyncpg.Record, phase: WorkloadPhase, **kw) -> None:
        """Report on a change of state, else every ``report_every_s``: cost and log tail stay fresh."""
        fresh = row["state"] == phase.value and row["report_age_s"] is not None
        if fresh and row["report_age_s"] < self.report_every_s:
            return
        await self.report(self._event(row["job_id"], row["attempt"], phase, resource_id=row["resource_id"],
                                      **_costs(row), **kw))
        await self.workloads.reported(str(row["job_id"]), row["attempt"])

    async def _finish(self, row: asyncpg.Record, result: TrainerResult, request: WorkloadRequest,
                      credentials) -> None:
        """The workload reported its end: publish a success where the options ask, end the resource, deliver
        what it could not (later, if ingest is away now), report how it ended."""
        job_id, attempt, folder = str(row["job_id"]), row["attempt"], request.artifacts_dir
        phase, message = result_phase(result), result.error_message
        if phase is WorkloadPhase.SUCCEEDED:
            try:
                message = await self.compute.deliver(request, credentials, _localised(result, folder)) or message
            except ProviderError as exc:
                log.warning("job %s: delivering the result failed: %s", job_id, exc.message)
                message = f"trained, but publishing the result failed: {exc.message}"
        await self._terminate(row)  # before anything slow: the machine bills until then
        if phase is WorkloadPhase.SUCCEEDED:
            try:  # for the registry and gateways of other machines; on this one's disk it is there anyway
                await keep_output(self.settings, job_id, attempt)
            except Exception as exc:
                log.warning("job %s attempt %s: keeping its output in the store failed (%s: %s); services of "
                            "other machines will not find it", job_id, attempt, type(exc).__name__, exc)
        delivered = await asyncio.to_thread(replay_spool, self.settings, job_id, folder)
        tail = await asyncio.to_thread(read_log_tail, folder)
        await self._end(job_id, attempt, phase, result=_localised(result, folder), message=message, log_tail=tail,
                        **_costs(row), spool_pending=not delivered)

    async def _deliver_pending_spools(self) -> None:
        for row in await self.workloads.pending_spools():
            job_id, attempt = str(row["job_id"]), row["attempt"]
            folder = artifacts_dir(self.settings, job_id, attempt)
            if await asyncio.to_thread(replay_spool, self.settings, job_id, folder):
                await self.workloads.spool_delivered(job_id, attempt)
                log.info("job %s attempt %s: spooled metrics delivered", job_id, attempt)

    async def _stop(self, row: asyncpg.Record, phase: WorkloadPhase, message: str, tail: str | None) -> None:
        log.warning("job %s attempt %s: %s", row["job_id"], row["attempt"], message.splitlines()[0])
        await self._terminate(row)
        await self._end(str(row["job_id"]), row["attempt"], phase, message=message, log_tail=tail,
                        **_costs(row))

    async def reconcile(self) -> int:
        """Terminate every resource of this provider that no live workload owns, and any second resource of an
        attempt that already has one. Returns how many."""
        ended = 0
        for user_id in await self.workloads.users():
            try:
                credentials = await self.credentials(user_id)
                resources = await self.compute.list_own(credentials)
            except (ProviderError, MissingCredentials):
                continue
            live_names = {resource_name(self.compute.installation, str(r["job_id"]), r["attempt"])
                          for r in await self.workloads.live()}
            try:
                await self.compute.tidy(credentials, live_names)
            except ProviderError as exc:
                log.info("tidying %s failed: %s", self.provider, exc.message)
            for resource in resources:
                recorded = await self.workloads.resource_of(resource.job_id, resource.attempt)
                if recorded == "":
                    continue  # its create is in flight; the creator looks it up by name
                if recorded is None or recorded != resource.resource_id:
                    why = "no live job owns it" if recorded is None else f"its attempt runs on {recorded}"
                    log.warning("terminating %s %s: %s", self.provider, resource.resource_id, why)
                    try:
                        await self.compute.terminate(resource.resource_id, credentials)
                    except ProviderError as exc:
                        log.warning("terminating %s failed: %s", resource.resource_id, exc.message)
                        continue
                    ended += 1
        return ended

    async def _terminate(self, row: asyncpg.Record) -> None:
        try:
            await self.compute.terminate(row["resource_id"], await self.credentials(row["user_id"]))
        except (ProviderError, MissingCredentials) as exc:
            log.warning("job %s: terminate failed (%s); reconciliation will retry", row["job_id"], exc.message)

    async def _end(self, job_id: str, attempt: int, phase: WorkloadPhase, *, spool_pending: bool = False,
                   **kw) -> None:
        """End the attempt and report how, once: the report is written with the end, in one transaction, and
        published after it (again by the outbox relay if this process dies in between)."""
        row = await self.workloads.get(job_id, attempt)
        folder = artifacts_dir(self.settings, job_id, attempt)
        live = row is not None and row["state"] != "ended"
        if live and self._pushes(row):
            await self._pull_heartbeats(job_id, attempt)
        if self.publish_log is not None and live:  # the log's last lines before the end
            await self._ship_log(row, final=True)
        event = self._event(job_id, attempt, phase, **kw)
        async with self.pool.acquire() as conn, conn.transaction():
            if not await self.workloads.ended(conn, job_id, attempt, spool_pending=spool_pending):
                return
            await self.outbox.put(conn, event)
        with contextlib.suppress(Exception):  # housekeeping: a failure keeps chunks another pull skips
            await heartbeats.forget(self.pool, folder, job_id, attempt)
        await self.outbox.send(self.report, event)

    async def _pull_heartbeats(self, job_id: str, attempt: int) -> None:
        """The attempt's stored heartbeats into its folder (``heartbeats.pull``); a failure is logged and the next
        round tries again, as for the log shipping it feeds."""
        try:
            await heartbeats.pull(self.pool, artifacts_dir(self.settings, job_id, attempt), job_id, attempt)
        except Exception as exc:
            log.warning("job %s attempt %s: reading its heartbeats failed (%s: %s)", job_id, attempt,
                        type(exc).__name__, exc)

    async def _ship_ended_logs(self, seconds: float) -> None:
        """The lines written to the logs of attempts that ended in the last ``seconds`` since they were read."""
        if self.publish_log is not None:
            for row in await self.workloads.ended_since(seconds):
                if self._pushes(row):  # a heartbeat after the end: the log's last bytes
                    await self._pull_heartbeats(str(row["job_id"]), row["attempt"])
                await self._ship_log(row, final=True)

    def _pushes(self, row: asyncpg.Record) -> bool:
        """Whether the attempt's workload sends its reports (heartbeats, output) rather than having them fetched."""
        return self.compute.remote and self.compute.pushes((row["command"] or {}).get("provider_options") or {})

    async def _ship_log(self, row: asyncpg.Record, *, final: bool = False) -> None:
        """Publish the lines of the attempt's log not published yet, a batch at a time (every one, the last without
        its newline too, with ``final``: the workload is over), storing how far it got after each. A crash in
        between publishes a batch again under the same numbers, which the scheduler keeps once. A failure
        is logged, never raised: the log waits for the next poll, and nothing else does."""
        if self.publish_log is None:
            return
        job_id, attempt = str(row["job_id"]), row["attempt"]
        folder, offset, sent = artifacts_dir(self.settings, job_id, attempt), row["log_offset"], row["log_lines"]
        try:
            for _ in range(MAX_LOG_BATCHES):
                batch = await asyncio.to_thread(read_lines, folder, offset, final=final)
                if not batch.lines:
                    return
                # the same batch read again has the same id (JetStream drops the copy); a longer one another
                await self.publish_log(WorkloadLogged(
                    event_id=derived_id(job_id, "log", attempt, offset, batch.end), job_id=job_id,
                    provider=self.provider, attempt=attempt, first_line=sent + 1, lines=batch.lines))
                offset, sent = batch.end, sent + len(batch.lines)
                await self.workloads.logged(job_id, attempt, offset, sent)
        except Exception as exc:
            log.warning("job %s attempt %s: publishing its log failed (%s: %s); the next poll tries again", job_id,
                        attempt, type(exc).__name__, exc)

    async def close(self) -> None:
        await self.compute.close()


def _localised(result: TrainerResult, folder: Path) -> TrainerResult:
    """Paths in a remote result point into the machine; the artifacts are in ``folder`` now."""

    def here(path: str | None) -> str | None:
        found = folder / Path(path).name if path else None
        return str(found) if found is not None and found.is_dir() and not found.is_symlink() else None

    return result.model_copy(update={"output_dir": str(folder), "adapter_path": here(result.adapter_path),
                                     "merged_path": here(result.merged_path)})


def _fraction(progress: dict | None) -> float | None:
    """Steps done over steps planned, from the trainer's progress file."""
    step, planned = (progress or {}).get("step"), (progress or {}).get("max_steps")
    if not isinstance(step, int) or not isinstance(planned, int) or planned <= 0:
        return None
    return min(max(step / planned, 0.0), 1.0)


def _cost(row: asyncpg.Record) -> float:
    """Billing runs from creation, at each hourly price the provider reported for as long as it held."""
    return round(row["cost_accrued_usd"] + row["cost_per_hour"] * float(row["price_age_s"]) / 3600.0, 6)


def _costs(row: asyncpg.Record) -> dict[str, float]:
    """What a report says of cost: so far, and the hourly price it accrues at."""
    return {"cost_usd": _cost(row), "cost_per_hour": float(row["cost_per_hour"])}

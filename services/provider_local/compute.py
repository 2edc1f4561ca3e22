"""Runs trainer processes on this machine and watches them to the end.

Contract: ``provision`` returns once the process has started; ``terminate`` is idempotent and returns
fast (the watcher reports the end); every end of a workload is reported exactly once per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from shared.events import ProvisionJob, WorkloadPhase, WorkloadReported
from shared.settings import Settings
from shared.tokens import job_token

from .bundle import Bundle, write_bundle
from .workloads import WorkloadRepository

log = logging.getLogger(__name__)

PROVIDER = "local"
LOG_REPORT_INTERVAL_S = 10.0
SPOOL_REPLAY_TIMEOUT_S = 60.0

Report = Callable[[WorkloadReported], Awaitable[None]]


@dataclass
class _Running:
    job_id: str
    attempt: int
    bundle: Bundle
    pid: int
    process: asyncio.subprocess.Process | None = None
    watcher: asyncio.Task | None = None
    stopping: bool = False
    interrupted_by_shutdown: bool = False


@dataclass
class LocalCompute:
    settings: Settings
    workloads: WorkloadRepository
    report: Report
    running: dict[str, _Running] = field(default_factory=dict)

    def _event(self, job_id: str, attempt: int, phase: WorkloadPhase, **kw) -> WorkloadReported:
        return WorkloadReported(job_id=job_id, provider=PROVIDER, attempt=attempt, phase=phase, cost_usd=0.0, **kw)

    async def provision(self, cmd: ProvisionJob) -> None:
        if not await self.workloads.claim(cmd.job_id, cmd.attempt):
            log.info("job %s attempt %s already handled", cmd.job_id, cmd.attempt)
            return
        if await self.workloads.stop_requested(cmd.job_id):
            await self.workloads.ended(cmd.job_id, cmd.attempt)
            await self.report(self._event(cmd.job_id, cmd.attempt, WorkloadPhase.STOPPED,
                                          message="stopped before it started"))
            return
        await self.report(self._event(cmd.job_id, cmd.attempt, WorkloadPhase.PROVISIONING))
        try:
            bundle = await asyncio.to_thread(
                write_bundle, self.settings.jobs_dir, cmd, ingest_url=self.settings.ingest_url,
                ingest_token=job_token(self.settings.require_secret_key(), cmd.job_id))
            process = await self._spawn(bundle)
        except OSError as exc:
            await self.workloads.ended(cmd.job_id, cmd.attempt)
            await self.report(self._event(cmd.job_id, cmd.attempt, WorkloadPhase.FAILED,
                                          message=f"could not start the trainer: {exc}"))
            return
        started_at = psutil.Process(process.pid).create_time()
        await self.workloads.started(cmd.job_id, cmd.attempt, bundle_dir=str(bundle.root), pid=process.pid,
                                     pid_started_at=started_at)
        run = _Running(cmd.job_id, cmd.attempt, bundle, process.pid, process)
        self.running[cmd.job_id] = run
        await self.report(self._event(cmd.job_id, cmd.attempt, WorkloadPhase.RUNNING,
                                      message=f"trainer started (pid {process.pid})"))
        run.watcher = asyncio.create_task(self._watch(run), name=f"watch-{cmd.job_id}")

    async def _spawn(self, bundle: Bundle) -> asyncio.subprocess.Process:
        python = self.settings.trainer_python or sys.executable
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET_")}
        env["PYTHONUNBUFFERED"] = "1"
        logfile = await asyncio.to_thread(open, bundle.log_path, "ab")
        with logfile:
            return await asyncio.create_subprocess_exec(
                python, "-m", "trainer", "--spec", str(bundle.spec_path),
                stdout=logfile, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                cwd=bundle.root, env=env, start_new_session=True)

    async def _wait(self, run: _Running) -> int | None:
        """Wait for the process (a child, or one adopted after a restart) and send the log tail now and then;
        returns the exit code when known (an adopted process's is not)."""
        last_report = time.monotonic()
        while True:
            if run.process is not None:
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(run.process.wait(), 1.0)
            elif not _alive(run.pid):
                return None
            else:
                await asyncio.sleep(1.0)
            if time.monotonic() - last_report >= LOG_REPORT_INTERVAL_S:
                last_report = time.monotonic()
                await self.report(self._event(run.job_id, run.attempt, WorkloadPhase.RUNNING,
                                              log_tail=run.bundle.log_tail()))

    async def _watch(self, run: _Running) -> None:
        exit_code = await self._wait(run)
        if run.bundle.has_spooled_metrics():
            await asyncio.to_thread(self._replay_spool, run)
        result = run.bundle.read_result()
        tail = run.bundle.log_tail()
        stop_requested = run.stopping or await self.workloads.stop_requested(run.job_id)
        if stop_requested:
            phase, message = WorkloadPhase.STOPPED, "stopped on request"
        elif result is not None and result.status == "completed":
            phase, message = WorkloadPhase.SUCCEEDED, None
        elif run.interrupted_by_shutdown or (result is not None and result.status == "interrupted"):
            phase, message = WorkloadPhase.PREEMPTED, "the local stack stopped while the job ran"
        else:
            phase = WorkloadPhase.FAILED
            message = (result.error_message if result and result.error_message
                       else f"trainer exited with code {exit_code}")
        await self.workloads.ended(run.job_id, run.attempt)
        self.running.pop(run.job_id, None)
        await self.report(self._event(run.job_id, run.attempt, phase, message=message, exit_code=exit_code,
                                      log_tail=tail, result=result))

    def _replay_spool(self, run: _Running) -> None:
        """Send what the trainer could not deliver before it ended (ingest was down or slow)."""
        from trainer.reporter import MetricsReporter

        token = job_token(self.settings.require_secret_key(), run.job_id)
        reporter = MetricsReporter(self.settings.ingest_url, run.job_id, token, str(run.bundle.spool_path))
        if not reporter.close(timeout=SPOOL_REPLAY_TIMEOUT_S):
            log.warning("job %s: metrics still spooled in %s", run.job_id, run.bundle.spool_path)

    async def terminate(self, job_id: str) -> None:
        live = await self.workloads.request_stop(job_id)
        run = self.running.get(job_id)
        if run is not None:
            run.stopping = True
            _signal_group(run.pid, signal.SIGTERM)
            asyncio.get_running_loop().call_later(self.settings.stop_grace_seconds, _signal_group,
                                                  run.pid, signal.SIGKILL)
        elif live:
            for row in live:
                if row["pid"] and _same_process(row["pid"], row["pid_started_at"]):
                    _signal_group(row["pid"], signal.SIGTERM)

    async def adopt_orphans(self) -> None:
        """After a restart: watch trainers still running, and report the ones that ended meanwhile."""
        for row in await self.workloads.live():
            job_id = str(row["job_id"])
            if row["state"] == "starting" or not row["bundle_dir"]:
                await self.workloads.ended(job_id, row["attempt"])
                await self.report(self._event(job_id, row["attempt"], WorkloadPhase.PREEMPTED,
                                              message="the provider stopped while starting the job"))
                continue
            run = _Running(job_id, row["attempt"], Bundle(Path(row["bundle_dir"])),
                           row["pid"], stopping=row["stop_requested"])
            if not _same_process(row["pid"], row["pid_started_at"]):
                run.pid = -1
            self.running[job_id] = run
            run.watcher = asyncio.create_task(self._watch(run), name=f"adopt-{job_id}")

    async def shutdown(self) -> None:
        """Stop every trainer this process started; each is reported preempted so it runs again later."""
        runs = list(self.running.values())
        for run in runs:
            run.interrupted_by_shutdown = True
            _signal_group(run.pid, signal.SIGTERM)
        watchers = [r.watcher for r in runs if r.watcher is not None]
        if not watchers:
            return
        _done, pending = await asyncio.wait(watchers, timeout=self.settings.stop_grace_seconds)
        for run in runs:
            if run.watcher in pending:
                _signal_group(run.pid, signal.SIGKILL)
        if pending:
            await asyncio.wait(pending, timeout=5)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _same_process(pid: int | None, started_at: float | None) -> bool:
    try:
        return bool(pid) and abs(psutil.Process(pid).create_time() - (started_at or 0)) < 1.0
    except psutil.NoSuchProcess:
        return False


def _signal_group(pid: int, sig: int) -> None:
    if pid <= 0:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)

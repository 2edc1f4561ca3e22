"""This machine behind the shared compute interface: each attempt is a trainer process that writes its output
straight into the attempt's artifacts folder. Free, so never reconciled; nothing to authenticate."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import psutil

from services.cloud.bundles import bundle_dir
from shared.environment import minimal_environment
from shared.errors import ProviderError
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
from shared.trainer_users import RunAs, TrainerUsers

from .api_client import SIGKILL, SIGTERM, Processes, process_id


class LocalCompute(Compute[None]):
    name = "local"
    remote = False
    reconciles = False
    needs_credentials = False

    def __init__(self, settings: Settings):
        self.settings = settings
        self.processes = Processes()
        self.users = TrainerUsers(settings)

    def _argv(self, spec_path: str) -> list[str]:
        return [self.settings.trainer_python or sys.executable, "-m", "trainer", "--spec", spec_path]

    async def provision(self, request: WorkloadRequest, credentials: None) -> Provisioned:
        """Start the trainer, as the job's user's own uid where the machine allows (``shared.trainer_users``):
        its bundle and output folder are handed over to that uid, which can read nothing else of the server's."""
        env = minimal_environment(request.env)
        try:
            run_as = await asyncio.to_thread(self._hand_over, request)
            if run_as is not None:
                env["HOME"] = str(run_as.home)
            resource_id = await asyncio.to_thread(
                self.processes.spawn, self._argv(str(request.bundle_dir / "spec.json")), cwd=request.bundle_dir,
                env=env, log_path=request.artifacts_dir / "train.log", run_as=run_as and run_as.popen())
        except OSError as exc:
            raise ProviderError(f"could not start the trainer: {exc}") from exc
        return Provisioned(resource_id, 0.0)

    def _hand_over(self, request: WorkloadRequest) -> RunAs | None:
        run_as = self.users.for_user(request.user_id)
        self.users.hand_over(run_as, request.bundle_dir, request.artifacts_dir)
        return run_as

    async def find(self, name: str, credentials: None) -> Provisioned | None:
        """A trainer already running this attempt's spec (started by a provider that stopped before it
        recorded it)."""
        parsed = parse_resource_name(name, self.installation)
        if parsed is None:
            return None
        wanted = self._argv(str(bundle_dir(self.settings, *parsed) / "spec.json"))[1:]

        def scan() -> Provisioned | None:
            for process in psutil.process_iter(["cmdline"]):
                with contextlib.suppress(psutil.Error):
                    if (process.info["cmdline"] or [])[1:] == wanted:
                        return Provisioned(process_id(process.pid), 0.0)
            return None

        return await asyncio.to_thread(scan)

    async def status(self, resource_id: str, credentials: None) -> ResourceStatus:
        if self.processes.alive(resource_id):
            return ResourceStatus(WorkloadPhase.RUNNING, f"trainer running (pid {resource_id.split(':')[0]})", 0.0)
        code = self.processes.exit_code(resource_id)
        ended = f"the trainer exited with code {code}" if code is not None else "the trainer process ended"
        return ResourceStatus(WorkloadPhase.FAILED, f"{ended} without a result", 0.0)

    async def terminate(self, resource_id: str, credentials: None) -> None:
        """SIGTERM to the trainer's process group (it saves a checkpoint and stops), SIGKILL after the grace."""
        self.processes.signal_group(resource_id, SIGTERM)
        asyncio.get_running_loop().call_later(self.settings.stop_grace_seconds, self.processes.signal_group,
                                              resource_id, SIGKILL)

    async def list_own(self, credentials: None) -> list[OwnResource]:
        return []

    async def close(self) -> None:
        """The provider stops: so do its trainers, each saving a checkpoint; their result says "interrupted",
        which the runner reports as preempted (once it runs again), so the job carries on from there."""
        children = self.processes.live_children()
        for resource_id in children:
            self.processes.signal_group(resource_id, SIGTERM)
        for resource_id in children:
            if not await asyncio.to_thread(self.processes.wait, resource_id, self.settings.stop_grace_seconds):
                self.processes.signal_group(resource_id, SIGKILL)

"""This machine as a provider's API: trainer processes, each in its own process group.

A process is named ``<pid>:<start time>`` so that a provider that restarts still finds its trainers, and never
mistakes a new process that reused a pid for one of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def process_id(pid: int) -> str:
    return f"{pid}:{psutil.Process(pid).create_time():.3f}"


def _parse(resource_id: str) -> tuple[int, float]:
    pid, _, started = resource_id.partition(":")
    return int(pid), float(started or 0)


@dataclass
class Processes:
    """Starts and watches trainer processes. Exit codes are known for the processes this object started."""

    children: dict[str, subprocess.Popen] = field(default_factory=dict)

    def spawn(self, argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
              run_as: dict | None = None) -> str:
        """Start ``argv`` in a process group of its own; ``run_as``: Popen's user, group and extra_groups."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # never through a link: the output folder may be the trainer's own (its uid could point it anywhere)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "ab") as log:
            process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, **(run_as or {}))
        resource_id = process_id(process.pid)
        self.children[resource_id] = process
        # Reaped as soon as it ends: with replicas of the provider, another replica may be the one that polls this
        # trainer, and a child its parent never waits for stays a zombie.
        threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()
        return resource_id

    def alive(self, resource_id: str) -> bool:
        child = self.children.get(resource_id)
        if child is not None:
            return child.poll() is None
        pid, started = _parse(resource_id)
        try:
            process = psutil.Process(pid)
            return abs(process.create_time() - started) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def exit_code(self, resource_id: str) -> int | None:
        child = self.children.get(resource_id)
        return child.poll() if child is not None else None

    def signal_group(self, resource_id: str, sig: int) -> None:
        if not self.alive(resource_id):
            return
        pid, _ = _parse(resource_id)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def live_children(self) -> list[str]:
        return [rid for rid, child in self.children.items() if child.poll() is None]

    def wait(self, resource_id: str, timeout: float) -> bool:
        child = self.children.get(resource_id)
        if child is None:
            return not self.alive(resource_id)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


SIGTERM, SIGKILL = signal.SIGTERM, signal.SIGKILL

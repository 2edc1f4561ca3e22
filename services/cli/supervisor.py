"""``tunefleet up`` keeps what it started alive: a service that exits is restarted with growing back-off and the
fact is logged; one that keeps dying gives up loudly. What it sees is written to ``{home}/run/supervisor.json``
for ``/healthz`` to show (restarts and last exit of each service).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.supervision import status_path

log = logging.getLogger(__name__)

#: Back-off before the n-th restart in a row: 1, 2, 4 … seconds, at most this.
MAX_BACKOFF_S = 30.0
#: More restarts than this within ``CRASH_WINDOW_S`` is a crash loop: the service is left down.
MAX_RESTARTS = 5
CRASH_WINDOW_S = 300.0


@dataclass
class Watched:
    pid: int
    restarts: int = 0
    last_exit: int | None = None
    gave_up: bool = False
    recent: list[float] = field(default_factory=list, repr=False)
    restart_at: float | None = field(default=None, repr=False)


class Supervisor:
    """Call ``check()`` now and then; it restarts through ``spawn(name)``, which returns the new process."""

    def __init__(self, home: Path, processes: dict[str, subprocess.Popen],
                 spawn: Callable[[str], subprocess.Popen]):
        self.home, self.processes, self.spawn = home, processes, spawn
        self.watched = {name: Watched(proc.pid) for name, proc in processes.items()}
        self.write()

    def check(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        changed = False
        for name, proc in list(self.processes.items()):
            state = self.watched.setdefault(name, Watched(proc.pid))
            if state.gave_up:
                continue
            if state.restart_at is None and proc.poll() is not None:
                state.last_exit = proc.returncode
                state.recent = [t for t in state.recent if now - t < CRASH_WINDOW_S]
                if len(state.recent) >= MAX_RESTARTS:
                    state.gave_up = True
                    log.error("service %s exited with code %s after %s restarts within %.0fs: giving up; see %s",
                              name, proc.returncode, len(state.recent), CRASH_WINDOW_S,
                              self.home / "logs" / f"{name}.log")
                else:
                    delay = min(2.0 ** len(state.recent), MAX_BACKOFF_S)
                    state.restart_at = now + delay
                    log.warning("service %s exited with code %s; restarting it in %.0fs", name, proc.returncode,
                                delay)
                changed = True
            if state.restart_at is not None and now >= state.restart_at:
                self.processes[name] = new = self.spawn(name)
                state.pid, state.restart_at = new.pid, None
                state.restarts += 1
                state.recent.append(now)
                log.warning("service %s restarted (pid %s, restart %s)", name, new.pid, state.restarts)
                changed = True
        if changed:
            self.write()

    def write(self) -> None:
        path = status_path(self.home)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {name: {k: v for k, v in asdict(state).items() if k not in ("recent", "restart_at")}
                for name, state in self.watched.items()}
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps({"services": body, "pid": os.getpid()}))
        partial.replace(path)

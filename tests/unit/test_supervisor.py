"""The supervisor of `tunefleet up`, on real processes, with its clock driven by the test."""

from __future__ import annotations

import subprocess
import sys

from services.cli.supervisor import MAX_RESTARTS, Supervisor
from shared.supervision import read_status


def process(code: int | None) -> subprocess.Popen:
    """A process that exits at once with ``code``, or (None) one that keeps running."""
    script = "import time; time.sleep(60)" if code is None else f"raise SystemExit({code})"
    return subprocess.Popen([sys.executable, "-c", script])


def test_a_service_that_dies_is_restarted_with_back_off_and_a_crash_loop_gives_up(tmp_path, caplog):
    spawned: list[str] = []
    behaviour = {"steady": [3, None], "looping": [1] * 20}

    def spawn(name: str) -> subprocess.Popen:
        spawned.append(name)
        return process(behaviour[name].pop(0))

    processes = {name: spawn(name) for name in behaviour}
    spawned.clear()
    supervisor = Supervisor(tmp_path, processes, spawn)
    for proc in processes.values():
        proc.wait()
    now = 1000.0
    supervisor.check(now)
    assert spawned == []  # first the back-off
    supervisor.check(now + 1.0)
    assert sorted(spawned) == ["looping", "steady"]
    status = read_status(tmp_path)["services"]
    assert status["steady"]["restarts"] == 1 and status["steady"]["last_exit"] == 3
    assert status["steady"]["pid"] == supervisor.processes["steady"].pid
    for step in range(1, 200):  # it keeps dying: restarts come ever later, then it is left down
        supervisor.processes["looping"].wait()
        supervisor.check(now + 1.0 + 5.0 * step)
        if supervisor.watched["looping"].gave_up:
            break
    status = read_status(tmp_path)["services"]
    assert status["looping"]["gave_up"] and status["looping"]["restarts"] == MAX_RESTARTS
    assert status["steady"]["restarts"] == 1 and not status["steady"]["gave_up"]  # it stayed up
    assert "giving up" in caplog.text and "restarting it in" in caplog.text
    supervisor.processes["steady"].kill()
    supervisor.processes["steady"].wait()

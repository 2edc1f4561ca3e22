"""`tunefleet up` keeps its services alive: one that is killed comes back, and /healthz and the console say so."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from shared.supervision import read_status

from .conftest import wait_until

pytestmark = pytest.mark.e2e


def test_a_killed_service_is_restarted_and_healthz_shows_it(stack):
    before = read_status(stack.home)["services"]["scheduler"]
    os.kill(before["pid"], signal.SIGKILL)

    def back() -> bool:
        now = read_status(stack.home)["services"]["scheduler"]
        return now["restarts"] == before["restarts"] + 1 and \
            httpx.get(f"{stack.url}/healthz", timeout=5).status_code == 200

    wait_until(back, 90, "the scheduler to be restarted and ready")
    health = httpx.get(f"{stack.url}/healthz", timeout=5).json()
    scheduler = health["supervisor"]["scheduler"]
    assert scheduler["last_exit"] == -signal.SIGKILL and scheduler["pid"] != before["pid"]
    assert not scheduler["gave_up"] and health["ready"]
    console = (stack.home.parent / "up.log").read_text(errors="replace")
    assert "service scheduler exited with code -9; restarting it" in console
    assert "service scheduler restarted" in console

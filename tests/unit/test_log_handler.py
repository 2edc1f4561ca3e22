"""The scheduler keeps each line of a workload's log once and tells live viewers of the new ones, in one message."""

from __future__ import annotations

from services.scheduler.handlers import handle_workload_logged
from shared.events import JobLogAppended, WorkloadLogged
from tests.fakes import FakeLogs, RecordingBus


def logged(first_line: int, *lines: str, job_id: str = "j", attempt: int = 1) -> WorkloadLogged:
    return WorkloadLogged(job_id=job_id, provider="local", attempt=attempt, first_line=first_line, lines=list(lines))


async def test_lines_sent_again_are_kept_and_announced_once():
    logs, bus = FakeLogs({"j"}), RecordingBus()
    await handle_workload_logged(logged(1, "a", "b"), logs=logs, bus=bus)
    await handle_workload_logged(logged(2, "b", "c"), logs=logs, bus=bus)  # a tail sent again, overlapping
    await handle_workload_logged(logged(1, "a", "b"), logs=logs, bus=bus)  # nothing new: nothing told
    await handle_workload_logged(logged(1, "x", attempt=2), logs=logs, bus=bus)
    assert [type(m) for m in bus.announced] == [JobLogAppended] * 3 and bus.published == []
    assert [[(x.attempt, x.number, x.text) for x in m.lines] for m in bus.announced] == [
        [(1, 1, "a"), (1, 2, "b")], [(1, 3, "c")], [(2, 1, "x")]]


async def test_lines_of_an_unknown_job_are_dropped_and_a_bus_away_loses_no_line():
    class Away(RecordingBus):
        async def announce(self, message) -> None:
            raise ConnectionError("NATS is restarting")

    logs = FakeLogs({"j"})
    await handle_workload_logged(logged(1, "ghost", job_id="other"), logs=logs, bus=Away())
    await handle_workload_logged(logged(1, "kept\x00"), logs=logs, bus=Away())  # stored; live viewers miss it
    assert logs.lines == {("j", 1, 1): "kept\ufffd"}

"""A service that handles several messages at once applies one job's in order, and other jobs' meanwhile."""

from __future__ import annotations

import asyncio

from shared.bus import KeyedLocks


async def test_one_keys_holders_wait_for_each_other_and_other_keys_do_not():
    locks, order = KeyedLocks(), []

    async def handle(key: str, name: str, pause: float) -> None:
        async with locks.hold(key):
            order.append(f"{name} in")
            await asyncio.sleep(pause)
            order.append(f"{name} out")

    await asyncio.gather(handle("job-1", "a", 0.05), handle("job-1", "b", 0.0), handle("job-2", "c", 0.0))
    assert order.index("a out") < order.index("b in")  # the same job: one after the other, in arrival order
    assert order.index("c out") < order.index("a out")  # another job did not wait
    assert locks._locks == {}  # nothing kept for jobs no longer handled

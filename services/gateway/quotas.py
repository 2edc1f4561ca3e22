"""Per-user limits, so that one user cannot take the server's CPU or connections from the others. Going over one
answers 429, naming the limit and its setting.

Preflights and event streams are counted in this gateway process (each replica keeps its own count); local jobs
are counted in the database, under a per-user lock, so concurrent deploys cannot slip past the limit.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from shared.errors import QuotaExceeded
from shared.settings import Settings

from . import repository


class UserSlots:
    """At most ``limit`` held at once per user."""

    def __init__(self, what: str, limit: int, setting: str):
        self.what, self.limit, self.setting = what, limit, setting
        self.held: Counter[str] = Counter()

    def take(self, user: str) -> None:
        if self.held[user] >= self.limit:
            raise QuotaExceeded(f"you have {self.held[user]} {self.what} running, the most this server allows one "
                                f"user ({self.setting}={self.limit}); wait for one to end and try again")
        self.held[user] += 1

    def give_back(self, user: str) -> None:
        self.held[user] -= 1
        if self.held[user] <= 0:
            del self.held[user]

    @contextlib.asynccontextmanager
    async def hold(self, user: str) -> AsyncIterator[None]:
        self.take(user)
        try:
            yield
        finally:
            self.give_back(user)


@dataclass(frozen=True)
class ProcessQuotas:
    """The per-user counters of one gateway process, made with the app from its settings."""

    preflights: UserSlots
    streams: UserSlots

    @classmethod
    def from_settings(cls, settings: Settings) -> ProcessQuotas:
        return cls(preflights=UserSlots("preflights", settings.max_preflights_per_user,
                                        "TUNEFLEET_MAX_PREFLIGHTS_PER_USER"),
                   streams=UserSlots("event streams", settings.max_streams_per_user,
                                     "TUNEFLEET_MAX_STREAMS_PER_USER"))


async def check_local_jobs(conn: asyncpg.Connection, user_id: str, limit: int) -> None:
    """Within the transaction that stores a local deploy: refuse it when the user has ``limit`` unfinished. A
    deploy the scheduler has not made a job of counts for an hour (it would be stuck, not running, after that)."""
    unfinished = await repository.count_unfinished_local(conn, user_id)
    if unfinished >= limit:
        raise QuotaExceeded(f"you have {unfinished} local jobs unfinished, the most this server allows one user "
                            f"(TUNEFLEET_MAX_LOCAL_JOBS_PER_USER={limit}); stop one or wait for it to end, or deploy "
                            "on a cloud provider")

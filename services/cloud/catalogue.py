"""A provider service's answer to ``subjects.catalogue``: its offers for one user's account, read with that user's
own credentials, within a deadline, and cached; when the API does not answer, the last answer, marked stale."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from shared.catalogue import Catalogue
from shared.errors import TuneFleetError

from .runner import CloudRunner

log = logging.getLogger(__name__)

#: An answer is reused this long (prices change daily, capacity by the minute).
FRESH_FOR_S = 120.0
#: The longest the provider's API is waited for.
DEADLINE_S = 15.0


class CatalogueCache:
    def __init__(self, runner: CloudRunner, fresh_for_s: float = FRESH_FOR_S, deadline_s: float = DEADLINE_S):
        self.runner, self.fresh_for_s, self.deadline_s = runner, fresh_for_s, deadline_s
        self._last: dict[str, tuple[float, Catalogue]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def for_user(self, user_id: str) -> Catalogue:
        provider = self.runner.provider
        async with self._locks.setdefault(user_id, asyncio.Lock()):  # one API call per user at a time
            seen = self._last.get(user_id)
            if seen is not None and time.monotonic() - seen[0] < self.fresh_for_s:
                return seen[1]
            try:
                credentials = await self.runner.credentials(user_id)
                offers = await asyncio.wait_for(self.runner.compute.catalogue(credentials), self.deadline_s)
            except Exception as exc:  # whatever failed, the last answer (if any) is better than none
                if isinstance(exc, TuneFleetError):
                    why = exc.message
                elif isinstance(exc, TimeoutError):
                    why = f"no answer in {self.deadline_s:.0f} s"
                else:
                    why = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("%s catalogue for %s: %s", provider, user_id, why)
                if seen is not None:
                    return seen[1].model_copy(update={"stale": True, "error": why})
                return Catalogue(provider=provider, error=why)
            fresh = Catalogue(provider=provider, offers=sorted(offers, key=lambda o: (o.usd_per_hour is None,
                                                                                      o.usd_per_hour or 0)),
                              fetched_at=datetime.now(UTC))
            self._last[user_id] = (time.monotonic(), fresh)
            return fresh

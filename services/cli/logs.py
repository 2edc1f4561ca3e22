"""A job's log lines for the terminal: GET /api/training/jobs/{id}/logs page by page, or, from a gateway that has
no such route yet (it answers 404 for the route itself), the new lines of the job's ``logs_tail``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .client import Gateway, api_error, route_missing


@dataclass(frozen=True)
class LogLine:
    text: str
    attempt: int | None = None
    number: int | None = None


def lines_after(old: Sequence[str], new: Sequence[str]) -> list[str]:
    """The lines of a log tail ``new`` that were not in the previous tail ``old``: those after the longest end of
    ``old`` that ``new`` starts with; all of ``new`` when the two do not overlap."""
    for k in range(min(len(old), len(new)), 0, -1):
        if list(old[len(old) - k:]) == list(new[:k]):
            return list(new[k:])
    return list(new)


@dataclass
class LogSource:
    """Each ``read()`` returns the lines not returned before."""

    gateway: Gateway
    job_id: str
    query: str | None = None
    after: Any = None
    has_route: bool = True
    tail: list[str] = field(default_factory=list)

    def read(self) -> list[LogLine]:
        if self.has_route:
            found = self._pages()
            if found is not None:
                return found
            self.has_route = False
        job = self.gateway.get(f"/api/training/jobs/{self.job_id}")
        tail = (job.get("logs_tail") or "").splitlines()
        new, self.tail = lines_after(self.tail, tail), tail
        return [LogLine(text) for text in new if not self.query or self.query.lower() in text.lower()]

    def _pages(self) -> list[LogLine] | None:
        """Every new line from the logs route; None when the gateway has no such route."""
        lines: list[LogLine] = []
        while True:
            params = {k: v for k, v in (("after", self.after), ("q", self.query)) if v is not None}
            response = self.gateway.http.get(f"/api/training/jobs/{self.job_id}/logs", params=params)
            if route_missing(response):
                return None
            if response.status_code != 200:
                raise api_error(response)
            page = response.json()
            lines += [LogLine(line["text"], line.get("attempt"), line.get("number")) for line in page["lines"]]
            moved = page.get("next_after") not in (None, self.after)
            if moved:
                self.after = page["next_after"]
            if not page["lines"] or not moved:
                return lines

"""A small reader of server-sent events over httpx, for the CLI and the tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson


def iter_events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    """Yield (event, data) pairs from a streaming text/event-stream response."""
    event, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield event, orjson.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)

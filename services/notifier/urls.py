"""Which webhook URLs the notifier calls: http(s) only, and (unless the operator allows private URLs) only at a
public address, checked when the webhook is made and again, pinned, at each send (``shared.netpolicy``)."""

from __future__ import annotations

import asyncio

import httpx

from shared.netpolicy import public_address

SCHEMES = ("https", "http")
MAX_LENGTH = 2048


class BadWebhookUrl(ValueError):
    """A URL the notifier does not call; the message says why and what to give instead."""


def parse(url: str) -> httpx.URL:
    if len(url) > MAX_LENGTH:
        raise BadWebhookUrl(f"is longer than {MAX_LENGTH} characters")
    if any(c.isspace() for c in url):
        raise BadWebhookUrl("holds white space; percent-encode it (%20) or remove it")
    try:
        url.encode()
        parsed = httpx.URL(url)
        host = parsed.host  # IDNA-decoded: raises for a malformed one
        parsed.netloc.decode("ascii")  # the Host header of a pinned send
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise BadWebhookUrl(f"is not a URL ({exc}); give one like https://example.com/hooks/tunefleet") from None
    if parsed.scheme not in SCHEMES:
        scheme = f"the scheme {parsed.scheme!r}" if parsed.scheme else "no scheme"
        raise BadWebhookUrl(f"has {scheme}; give an https:// (or http://) URL")
    if not host:
        raise BadWebhookUrl("has no host; give one like https://example.com/hooks/tunefleet")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise BadWebhookUrl(f"has the port {parsed.port}; a port is 1 to 65535")
    return parsed


def port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


async def checked_address(url: httpx.URL) -> str:
    """The public address to connect to for ``url``'s host now; raises ``netpolicy.BlockedAddress``."""
    return await asyncio.to_thread(public_address, url.host, port(url))

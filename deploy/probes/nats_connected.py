"""Health probe of a TuneFleet service that serves no HTTP (scheduler, providers, model registry, notifier).

Exit 0 while this container's network namespace holds an established TCP connection to a port of a server that
``TUNEFLEET_NATS_URL`` names (4222 where a URL gives none), 1 otherwise. A service opens its lasting NATS
connection only after its pool, its migrations and its streams are in place, so the answer means "started and
connected"; a process whose event loop is stuck loses that connection once the server's pings go unanswered.

It reads ``/proc/net/tcp`` and ``/proc/net/tcp6`` and imports nothing outside the standard library, so it costs a
few milliseconds and no connection. The services answer a deeper health request on NATS (``tunefleet.health.<name>``)
too, but any replica may answer it, so it cannot tell one pod's health.

    python deploy/probes/nats_connected.py
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from urllib.parse import urlsplit

DEFAULT_PORT = 4222
ESTABLISHED = "01"
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def nats_ports(nats_url: str) -> set[int]:
    """The ports of the servers a (comma-separated) ``TUNEFLEET_NATS_URL`` names."""
    ports = set()
    for url in filter(None, (part.strip() for part in nats_url.split(","))):
        ports.add(urlsplit(url if "://" in url else f"nats://{url}").port or DEFAULT_PORT)
    return ports


def established_remote_ports(table: str) -> Iterable[int]:
    """Remote ports of the established connections in one ``/proc/net/tcp``-style table."""
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == ESTABLISHED:
            yield int(fields[2].rpartition(":")[2], 16)


def connected(nats_url: str, tables: Iterable[str]) -> bool:
    wanted = nats_ports(nats_url)
    return any(port in wanted for table in tables for port in established_remote_ports(table))


def _read(paths: Iterable[str]) -> Iterable[str]:
    for path in paths:
        try:
            with open(path, encoding="ascii") as f:
                yield f.read()
        except OSError:  # no IPv6 in this namespace
            continue


def main() -> int:
    nats_url = os.environ.get("TUNEFLEET_NATS_URL", "")
    if not nats_url:
        print("TUNEFLEET_NATS_URL is not set", file=sys.stderr)
        return 1
    if connected(nats_url, _read(TABLES)):
        return 0
    print(f"no established connection to NATS (ports {sorted(nats_ports(nats_url))})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

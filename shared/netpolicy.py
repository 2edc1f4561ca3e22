"""Which addresses a server of TuneFleet's may call on a configuration's behalf (an RLHF judge of a local job).

A configuration names a URL; the server (or a trainer on it) would call it from inside the operator's network. So
the host is resolved, and the call goes only to a public address, pinned for that call: a name that resolves to a
public address when checked and to a private one when connected to (DNS rebinding) never reaches the private one.
Private, loopback, link-local (cloud metadata at 169.254.169.254), multicast, reserved and unspecified ranges are
refused unless the operator allows them.

Standard library only: the trainer imports it.
"""

from __future__ import annotations

import ipaddress
import socket

ALLOW_SETTING = "TUNEFLEET_ALLOW_PRIVATE_URLS"


class BlockedAddress(ValueError):
    """The host resolves to an address this server does not call, or does not resolve."""


def public_address(host: str, port: int) -> str:
    """The address to connect to for ``host``: every address it resolves to must be public. Raises
    BlockedAddress naming what it found."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BlockedAddress(f"{host} does not resolve ({exc})") from exc
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise BlockedAddress(f"{host} resolves to {ip}, a private, loopback, link-local or reserved address "
                                 f"that this server does not call (the operator can allow it with {ALLOW_SETTING})")
    if not addresses:
        raise BlockedAddress(f"{host} does not resolve")
    return addresses[0]

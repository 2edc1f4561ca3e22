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
        if not all(_public(a) for a in _with_embedded(ip)):
            raise BlockedAddress(f"{host} resolves to {ip}, a private, loopback, link-local or reserved address "
                                 f"that this server does not call (the operator can allow it with {ALLOW_SETTING})")
    if not addresses:
        raise BlockedAddress(f"{host} does not resolve")
    return addresses[0]


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _with_embedded(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list:
    """``ip`` and the IPv4 addresses an IPv6 one carries (mapped, 6to4, NAT64, IPv4-compatible), which a
    translating network would reach."""
    found = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.ipv4_mapped:
            found.append(ip.ipv4_mapped)
        if ip.sixtofour:
            found.append(ip.sixtofour)
        if any(ip in net for net in _NAT64) or int(ip) >> 32 == 0:
            found.append(low32)
    return found


def _public(ip) -> bool:
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local
    return ip.is_global and not ip.is_multicast and not site_local

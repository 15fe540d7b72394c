"""Who the client is when Farebox sits behind a proxy (nginx).

Only a peer listed in `trusted_proxies` may tell us, in X-Forwarded-For,
who it is forwarding for; anyone else's copy is spoofing and is dropped.
The client is the right-most address in the chain that is not itself a
trusted proxy (the left-most ones are whatever the client claimed).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Networks(tuple[Network, ...]):
    """Networks, as a tuple whose hash is worked out once: it keys the
    is_trusted cache on every request (a network's hash is Python code)."""

    _hash: int

    def __new__(cls, items: Iterable[Network]) -> Networks:
        made = super().__new__(cls, items)
        made._hash = tuple.__hash__(made)
        return made

    def __hash__(self) -> int:
        return self._hash


def networks(cidrs: Iterable[str]) -> Networks:
    return Networks(ipaddress.ip_network(c, strict=False) for c in cidrs)


def is_trusted(address: str | None, trusted: tuple[Network, ...]) -> bool:
    """Whether `address` (an IP's text; None for a Unix socket) lies in `trusted`."""
    if not trusted or not address:
        return False
    return _is_trusted(address, trusted)


# Asked on every request for the peer's address (a handful of distinct ones:
# the proxies in front), and parsing it is the expensive part.
@functools.lru_cache(maxsize=4096)
def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in trusted if net.version == ip.version)


def client_address(
    remote: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]
) -> str | None:
    """The client's address: `remote`, or from a trusted peer's X-Forwarded-For."""
    if not forwarded_for or not is_trusted(remote, trusted):
        return remote
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else remote

"""Free quotas: N requests per window per client, before a route asks for money.

Clients are counted by network, not by address: an IPv4 client by its /24
and an IPv6 client by its /64, since one household or phone gets a whole
/64 and could otherwise step through addresses for endless free requests.
The counts live in the store, so they survive restarts and are shared by
every worker and machine.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping

from multidict import CIMultiDict

from gateway.policy.schema import Quota
from gateway.store import Window


def client_network(remote: str | None) -> str:
    """The counting key of a client address: its /24 (IPv4) or /64 (IPv6)."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def client_of(quota: Quota, headers: Mapping[str, str], remote: str | None) -> str:
    """Who a quota counts this request against: a client key, or a network."""
    if quota.by == "key":
        key = headers.get(quota.key_header, "").strip()
        if key:
            # Hashed: keys are credentials and must not sit in the store as such.
            return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return client_network(remote)


def remaining(limit: int, window: Window) -> int:
    return max(0, limit - window.count)


def ratelimit_headers(limit: int, period: int, window: Window) -> CIMultiDict[str]:
    """RateLimit-* headers (IETF httpapi draft) saying what is left."""
    return CIMultiDict(
        {
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(remaining(limit, window)),
            "RateLimit-Reset": str(window.resets_in),
            "RateLimit-Policy": f"{limit};w={period}",
        }
    )

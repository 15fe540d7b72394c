"""The Host header as virtual hosts read it: one name per host, or a refusal.

`Paid.Test`, `paid.test:8080`, `paid.test.` and (for internationalised
names) the Unicode and the xn-- spelling all name one virtual host to an
upstream web server; the policy must see them as one too, or a host-bound
priced service is skipped for a catch-all (RFC 9110 section 7.2, RFC 3986
section 3.2.2, IDNA: RFC 5891).
"""

from __future__ import annotations

import functools
import re

_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_IPV6 = re.compile(r"\[[0-9a-f:.]+\]")


# The longest Host header read: a DNS name (RFC 1035: 255 octets at most, in
# its wire form, so fewer characters) and a port. A longer one names no host
# and would only grow what is made from it (the paywall's payment link and
# QR code, the upstream's X-Forwarded-Host).
MOST = 255


class HostError(ValueError):
    """A Host header no virtual host could read one way (answered with 400)."""

    def __init__(self, detail: str, reason: str = "bad-host") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@functools.lru_cache(maxsize=4096)
def host_name(host: str | None) -> str | None:
    """The host a request names: lower case, no port, no trailing dot, IDNA A-labels.

    None when there is no Host. Raises HostError for anything else that is
    not a host name, an IPv4 or a bracketed IPv6 address.
    """
    if not host:
        return None
    if len(host) > MOST:
        raise HostError(f"the Host header is longer than {MOST} characters", "host-too-long")
    text = host.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        name, rest = text[: end + 1], text[end + 1 :]
        if end < 0 or not _IPV6.fullmatch(name) or (rest and not _is_port(rest)):
            raise HostError("the Host header is not a valid IPv6 address")
        return name
    name, colon, port = text.partition(":")
    if colon and not _is_port(":" + port):
        raise HostError("the Host header's port is not a number")
    if name.endswith("."):
        name = name[:-1]  # the root label: the same host to DNS and to virtual hosts
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise HostError("the Host header is not a valid internationalised name") from None
    if not _NAME.fullmatch(name):
        raise HostError("the Host header is not a host name")
    return name


def _is_port(text: str) -> bool:
    return len(text) > 1 and text[1:].isdigit() and len(text) <= 6

"""Access tokens the gateway issued, kept so a grant is used instead of paid again.

The client reads a token's claims without verifying its signature: only the
gateway can verify it, and the client needs the claims just to know when
and where presenting the token is worth trying (scope, methods, expiry).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jwt
from yarl import URL

from gateway.edge.paths import PathError, canonicalize

# A token about to expire may be refused on its way: pay again instead.
EXPIRY_MARGIN = 5


@dataclass(frozen=True, slots=True)
class StoredToken:
    origin: str  # scheme://host:port the gateway answered on
    token: str
    service: str
    scope: str  # a canonical path (covers "resource") or a route pattern ("route", "tab")
    covers: str  # "resource", "route" or "tab" (draws on a prepaid tab)
    methods: tuple[str, ...]
    expires: int  # Unix seconds
    txid: str
    tab: str = ""  # covers "tab": the tab's id

    def usable(self, now: float | None = None) -> bool:
        return self.expires > (time.time() if now is None else now) + EXPIRY_MARGIN

    def allows(self, method: str, path: str) -> bool:
        if not (self.methods and (self.methods[0] == "*" or method in self.methods)):
            return False
        if self.covers == "resource":
            return path == self.scope
        # "route" and "tab": the scope is a route pattern (a tab's: `/mount/**`).
        pattern = _route_regex(self.scope)
        return pattern is not None and pattern.fullmatch(path) is not None

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "token": self.token}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredToken | None:
        return read_token(str(data.get("origin", "")), str(data.get("token", "")))


@lru_cache(maxsize=256)
def _route_regex(scope: str) -> re.Pattern[str] | None:
    # The gateway's own pattern compiler: `/datasets/**` means here exactly
    # what it means there. Case-insensitive services are not known to the
    # client; a miss costs one extra round trip, never a payment. Imported
    # here: the policy package (pydantic) is slow to load for a CLI.
    from gateway.policy.patterns import PatternError, compile_pattern

    try:
        return compile_pattern(scope).regex
    except PatternError:
        return None


def read_token(origin: str, token: str) -> StoredToken | None:
    """The claims of a Farebox access token, or None if it does not look like one."""
    try:
        claims = jwt.decode(
            token, options={"verify_signature": False, "verify_aud": False, "verify_exp": False}
        )
        methods = claims["methods"]
        return StoredToken(
            origin=origin,
            token=token,
            service=str(claims.get("svc", "")),
            scope=str(claims["scope"]),
            covers=str(claims["covers"]),
            methods=tuple(str(m).upper() for m in methods),
            expires=int(claims["exp"]),
            txid=str(claims.get("txid", "")),
            tab=str(claims.get("tab", "")) if claims["covers"] == "tab" else "",
        )
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return None


def origin_of(url: URL) -> str:
    return str(url.origin())


def canonical_path(url: URL) -> str | None:
    """The path as the gateway matches it (decoded, dot segments resolved)."""
    try:
        return canonicalize(url.raw_path or "/").path
    except PathError:
        return None

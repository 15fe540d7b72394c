"""Concessions: a lower price for people an issuer vouches for.

A benefits agency (say) signs short-lived eligibility credentials: JWTs the
client sends in `X-Farebox-Eligibility`. A route lists the concessions it
honours; a credential that verifies against one of their issuers' keys, has
not expired and names the right issuer gets that concession's discount.
Anything else — forged, expired, from a foreign issuer, malformed, signed
with an algorithm that is not the key's own — is ignored and the normal
price applies. The upstream never sees the credential (`X-Farebox-*`
headers are not forwarded).

A concession's free quota is counted per holder, and a holder is read from
the verified claims only, never from the token's text (an ECDSA signature
(r, s) has a twin (r, n-s) that verifies as well, so one credential has
several spellings): the issuer and `sub`; without a `sub`, the issuer and
`jti`, one quota per credential issued. A credential with neither names no
one and gets no free quota (its discount, if any, still applies).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import jwt

from gateway.policy.concessions import Eligibility, algorithms_for
from gateway.pricing.rates import Quote

HEADER = "X-Farebox-Eligibility"


def eligible(credential: str | None, offered: tuple[Eligibility, ...]) -> Eligibility | None:
    """The best concession this credential proves, or None."""
    if not credential or not offered or len(credential) > 8192:
        return None
    best = None
    for concession in offered:
        if concession.discount == 0 or (best is not None and best.discount >= concession.discount):
            continue
        if verified(credential, concession) is not None:
            best = concession
    return best


def free_quota_holder(
    credential: str | None, offered: tuple[Eligibility, ...]
) -> tuple[Eligibility, str] | None:
    """The first offered concession with a free quota this credential proves
    and names a holder for, and that holder (see `holder`)."""
    if not credential or len(credential) > 8192:
        return None
    for concession in offered:
        if concession.free_quota is None:
            continue
        claims = verified(credential, concession)
        who = None if claims is None else holder(claims)
        if who is not None:
            return concession, who
    return None


def verified(credential: str, concession: Eligibility) -> dict[str, Any] | None:
    """The credential's claims if it verifies for this concession, else None.

    Each issuer key is tried with its own algorithms only; any failure —
    pyjwt's errors, and the TypeError or ValueError a key it cannot use
    raises — means not proven, never an error of the request.
    """
    options = {"require": ["exp"], "verify_aud": False}
    for key in concession.keys:
        algorithms = list(algorithms_for(key))  # EdDSA, ES256/384, RS256, PS256: never HMAC
        if not algorithms:
            continue
        try:
            claims = jwt.decode(
                credential, key, algorithms=algorithms, issuer=concession.issuer, options=options
            )
        except Exception:  # forged, expired, malformed, mismatched: all just unproven
            continue
        if isinstance(claims, dict):
            return claims
    return None


def holder(claims: dict[str, Any]) -> str | None:
    """Who a verified credential names for a free quota: "iss|sub", else
    "iss|jti:<jti>" (one quota per credential issued); None without either."""
    issuer = claims.get("iss")
    issuer = issuer if isinstance(issuer, str) else ""
    subject = claims.get("sub")
    if isinstance(subject, str) and subject:
        return f"{issuer}|{subject}"
    credential_id = claims.get("jti")
    if isinstance(credential_id, str) and credential_id:
        return f"{issuer}|jti:{credential_id}"
    return None


def reduced(amount: int, concession: Eligibility) -> int:
    """A percentage off, rounded up (never below 1); 100% off is free (0)."""
    if concession.discount >= 100:
        return 0
    return max(1, math.ceil(amount * (100 - concession.discount) / 100))


def discounted(quote: Quote, concession: Eligibility) -> Quote:
    return replace(
        quote,
        satoshis=reduced(quote.satoshis, concession),
        full_satoshis=quote.satoshis,
        concession=concession,
    )

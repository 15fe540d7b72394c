"""Concessions: a lower price for people an issuer vouches for.

A benefits agency (say) signs short-lived eligibility credentials: JWTs the
client sends in `X-Farebox-Eligibility`. A route lists the concessions it
honours; a credential that verifies against one of their issuers' keys, has
not expired and names the right issuer gets that concession's discount.
Anything else — forged, expired, from a foreign issuer, malformed — is
ignored and the normal price applies. The upstream never sees the credential
(`X-Farebox-*` headers are not forwarded).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import jwt

from gateway.policy.concessions import Eligibility
from gateway.pricing.rates import Quote

HEADER = "X-Farebox-Eligibility"
ALGORITHMS = ["EdDSA", "ES256", "ES384", "RS256", "PS256"]  # never HMAC, never none


def eligible(credential: str | None, offered: tuple[Eligibility, ...]) -> Eligibility | None:
    """The best concession this credential proves, or None."""
    if not credential or not offered or len(credential) > 8192:
        return None
    best = None
    for concession in offered:
        if concession.discount == 0 or (best is not None and best.discount >= concession.discount):
            continue
        if _holder(credential, concession) is not None:
            best = concession
    return best


def free_quota_holder(
    credential: str | None, offered: tuple[Eligibility, ...]
) -> tuple[Eligibility, str] | None:
    """The first offered concession with a free quota this credential proves,
    and who holds it (issuer and subject: the quota is counted per holder)."""
    if not credential or len(credential) > 8192:
        return None
    for concession in offered:
        if concession.free_quota is None:
            continue
        holder = _holder(credential, concession)
        if holder is not None:
            return concession, holder
    return None


def _holder(credential: str, concession: Eligibility) -> str | None:
    """Who the credential names when it verifies for this concession, else None."""
    options = {"require": ["exp"], "verify_aud": False}
    for key in concession.keys:
        try:
            claims = jwt.decode(
                credential, key, algorithms=ALGORITHMS, issuer=concession.issuer, options=options
            )
        except jwt.PyJWTError:
            continue
        # Without a subject the credential itself is the holder: one quota per credential.
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            subject = "jwt:" + hashlib.sha256(credential.encode()).hexdigest()[:32]
        return f"{claims.get('iss', '')}|{subject}"
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

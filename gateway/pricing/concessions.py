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

A credential comes with every request its holder makes, and PyJWT reads
every character of it in Python before it checks anything: each answer
(verified claims, or a refusal that cannot change) is kept per credential
and concession, the claims until their `exp`, so a holder's requests, and
junk sent again and again, cost a lookup. Only a credential not valid yet
(`nbf` or `iat` ahead) is asked again, and what has not the shape of a
signed JWT for one of the concession's algorithms never reaches PyJWT.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections import OrderedDict
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
    raises — means not proven, never an error of the request. The answer
    is kept (`_KEPT`): claims until their `exp` (a copy each time: treat
    them as read-only), a refusal for good unless the credential is not
    valid yet.
    """
    key = (credential, id(concession))
    kept = _kept.get(key)
    # The entry holds the concession itself, so its id names no other object.
    if kept is not None and kept[0] is concession:
        claims, until = kept[1], kept[2]
        if claims is None:
            return None
        if time.time() < until:
            return dict(claims)
        del _kept[key]  # expired since: PyJWT says so, and that refusal is kept
    claims, lasting = _verify(credential, concession)
    if lasting and len(credential) <= _KEPT_LENGTH:
        until = float(claims["exp"]) if claims is not None else 0.0
        _kept[key] = (concession, claims, until)
        if len(_kept) > _KEPT:
            _kept.popitem(last=False)
    return None if claims is None else dict(claims)


def _verify(credential: str, concession: Eligibility) -> tuple[dict[str, Any] | None, bool]:
    """(claims or None, whether that answer lasts: False for a credential that
    is not valid yet, or claims whose exp is not a number)."""
    algorithm = _signed_with(credential)
    if algorithm is None:
        return None, True
    options = {"require": ["exp"], "verify_aud": False}
    lasting = True
    for key in concession.keys:
        algorithms = list(algorithms_for(key))  # EdDSA, ES256/384, RS256, PS256: never HMAC
        if algorithm not in algorithms:
            continue  # PyJWT refuses it too, after reading the whole token
        try:
            claims = jwt.decode(
                credential, key, algorithms=algorithms, issuer=concession.issuer, options=options
            )
        except jwt.ImmatureSignatureError:
            lasting = False  # its nbf or iat is ahead: it may verify in a moment
            continue
        except Exception:  # forged, expired, malformed, mismatched: all just unproven
            continue
        if isinstance(claims, dict):
            exp = claims.get("exp")
            return claims, isinstance(exp, int | float) and not isinstance(exp, bool)
    return None, lasting


# One base64url segment of a compact JWS (RFC 7515 section 7.1), with the
# trailing "=" PyJWT tolerates; ASCII only.
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+={0,2}", re.ASCII)
_KEPT = 16_384  # answers kept, the oldest forgotten first
_KEPT_LENGTH = 2048  # characters: answers about longer credentials are not kept
_kept: OrderedDict[tuple[str, int], tuple[Eligibility, dict[str, Any] | None, float]] = (
    OrderedDict()
)


def _signed_with(credential: str) -> str | None:
    """The `alg` a compact JWS's protected header names, read from the header
    alone; None for what has not that shape (PyJWT would refuse it too)."""
    header, dot, rest = credential.partition(".")
    if not dot or rest.count(".") != 1 or len(header) > 1024 or not _SEGMENT.fullmatch(header):
        return None
    header = header.rstrip("=")
    try:
        fields = json.loads(
            base64.b64decode(header + "=" * (-len(header) % 4), altchars=b"-_", validate=True)
        )
    except (binascii.Error, ValueError, RecursionError):  # JSONDecodeError, a deep nest
        return None
    algorithm = fields.get("alg") if isinstance(fields, dict) else None
    return algorithm if isinstance(algorithm, str) else None


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

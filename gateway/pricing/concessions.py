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
    is kept (`_kept`) for the time PyJWT would give it: claims from their
    iat/nbf until their exp (a copy each time: treat them as read-only), a
    refusal of an expired credential while the clock reads past its exp,
    any other refusal for good; a credential not valid yet is not kept.
    """
    key = (credential, id(concession))
    kept = _kept.get(key)
    # The entry holds the concession itself, so its id names no other object.
    if kept is not None and kept[0] is concession:
        _, claims, start, end = kept
        if start <= time.time() < end:
            return None if claims is None else dict(claims)
        del _kept[key]  # the clock left its span (it moved on, or was set back)
    claims, span = _verify(credential, concession)
    if span is not None and len(credential) <= (
        _KEPT_LENGTH if claims is not None else _REFUSED_LENGTH
    ):
        _kept[key] = (concession, claims, *span)
        if len(_kept) > _KEPT:
            _kept.popitem(last=False)
    return None if claims is None else dict(claims)


_ALWAYS = (-math.inf, math.inf)


def _verify(
    credential: str, concession: Eligibility
) -> tuple[dict[str, Any] | None, tuple[float, float] | None]:
    """(claims or None, the span of time (start, end) in which that answer
    holds, as PyJWT would judge it again; None: not to be kept)."""
    algorithm = _signed_with(credential)
    if algorithm is None:
        return None, None  # refused before PyJWT, as cheaply as a lookup: not kept
    options = {"require": ["exp"], "verify_aud": False}
    span: tuple[float, float] | None = _ALWAYS
    for key in concession.keys:
        algorithms = list(algorithms_for(key))  # EdDSA, ES256/384, RS256, PS256: never HMAC
        if algorithm not in algorithms:
            continue  # PyJWT refuses it too, after reading the whole token
        try:
            claims = jwt.decode(
                credential, key, algorithms=algorithms, issuer=concession.issuer, options=options
            )
        except jwt.ImmatureSignatureError:
            span = None  # its nbf or iat is ahead: it may verify in a moment
            continue
        except jwt.ExpiredSignatureError:
            if span is not None:
                span = _expired_since(credential, key, algorithms, concession)
            continue
        except Exception:  # forged, malformed, mismatched: all just unproven
            continue
        if isinstance(claims, dict):
            return claims, _valid_span(claims)
    return None, span


def _valid_span(claims: dict[str, Any]) -> tuple[float, float] | None:
    """When PyJWT opens these claims: from iat and nbf (whichever is later)
    until exp, each as PyJWT reads it (int(), no leeway); None if one will not
    read (PyJWT opened them, so it did: kept no longer than this call)."""
    try:
        start = max((int(claims[name]) for name in ("iat", "nbf") if name in claims), default=None)
        return (-math.inf if start is None else start), int(claims["exp"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


def _expired_since(
    credential: str, key: Any, algorithms: list[str], concession: Eligibility
) -> tuple[float, float] | None:
    """For a credential PyJWT refused as expired under `key`: (its exp, inf), the
    span in which that refusal holds (a clock set back before exp must ask
    again); None if its exp will not read."""
    try:
        claims = jwt.decode(
            credential,
            key,
            algorithms=algorithms,
            issuer=concession.issuer,
            options={"require": ["exp"], "verify_aud": False, "verify_exp": False},
        )
        return int(claims["exp"]), math.inf
    except Exception:  # as in _verify: any failure is just no answer to keep
        return None


# One base64url segment of a compact JWS (RFC 7515 section 7.1), with the
# trailing "=" PyJWT tolerates; ASCII only.
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+={0,2}", re.ASCII)
_KEPT = 8192  # answers kept, the oldest forgotten first
_KEPT_LENGTH = 8192  # characters of a credential whose claims are kept (as eligible's cap)
# Characters of a credential whose refusal is kept: junk sent again costs a
# lookup, and cannot make the answers kept hold more than about 10 MiB.
_REFUSED_LENGTH = 1024
_kept: OrderedDict[tuple[str, int], tuple[Eligibility, dict[str, Any] | None, float, float]] = (
    OrderedDict()
)


def _signed_with(credential: str) -> str | None:
    """The `alg` a compact JWS's protected header names, read from the header
    alone; None for what has not that shape (PyJWT would refuse it too)."""
    header, dot, rest = credential.partition(".")
    if not dot or rest.count(".") != 1 or not _SEGMENT.fullmatch(header):
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

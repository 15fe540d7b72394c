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

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.policy.schema import Concession
from gateway.pricer import Quote

HEADER = "X-Farebox-Eligibility"
ALGORITHMS = ["EdDSA", "ES256", "ES384", "RS256", "PS256"]  # never HMAC, never none


@dataclass(frozen=True, slots=True)
class Eligibility:
    name: str
    discount: int  # percent
    description: str
    issuer: str | None
    keys: tuple[Any, ...]  # public keys that may sign credentials


def load(name: str, concession: Concession, base: Path) -> Eligibility:
    """The verification keys of a concession; ValueError says what is wrong."""
    if concession.issuer_key is not None:
        try:
            keys: tuple[Any, ...] = (load_pem_public_key(concession.issuer_key.encode()),)
        except ValueError as exc:
            raise ValueError(f"issuer_key is not a PEM public key: {exc}") from None
    else:
        assert concession.issuer_jwks is not None
        path = base / concession.issuer_jwks
        try:
            keyset = jwt.PyJWKSet.from_dict(json.loads(path.read_text()))
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        except (ValueError, jwt.PyJWTError) as exc:
            raise ValueError(f"{path} is not a usable JWKS: {exc}") from None
        keys = tuple(k.key for k in keyset.keys)
    return Eligibility(name, concession.discount, concession.description, concession.issuer, keys)


def eligible(credential: str | None, offered: tuple[Eligibility, ...]) -> Eligibility | None:
    """The best concession this credential proves, or None."""
    if not credential or not offered or len(credential) > 8192:
        return None
    best = None
    for concession in offered:
        if best is not None and best.discount >= concession.discount:
            continue
        if _verifies(credential, concession):
            best = concession
    return best


def _verifies(credential: str, concession: Eligibility) -> bool:
    options = {"require": ["exp"], "verify_aud": False}
    for key in concession.keys:
        try:
            jwt.decode(
                credential, key, algorithms=ALGORITHMS, issuer=concession.issuer, options=options
            )
        except jwt.PyJWTError:
            continue
        return True
    return False


def discounted(quote: Quote, concession: Eligibility) -> Quote:
    """Apply a percentage off, rounded up; 100% off is free (0 satoshis)."""
    if concession.discount >= 100:
        satoshis = 0
    else:
        satoshis = max(1, math.ceil(quote.satoshis * (100 - concession.discount) / 100))
    return replace(quote, satoshis=satoshis, full_satoshis=quote.satoshis, concession=concession)

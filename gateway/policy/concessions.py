"""Concession models: who may get a lower price, and the keys that prove it.

Loaded with the policy (a concession names its issuer and the issuer's
public key or JWKS file); pricing/concessions.py checks a credential
against them. Here, with the policy, so loading needs nothing from pricing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    SECP384R1,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.policy.schema import Concession, Quota


@dataclass(frozen=True, slots=True)
class Eligibility:
    name: str
    discount: int  # percent
    description: str
    issuer: str | None
    keys: tuple[Any, ...]  # public keys that may sign credentials, each with `algorithms_for`
    free_quota: Quota | None = None  # counted per credential holder (`sub`, else `jti`)


USABLE = "Ed25519, Ed448, EC P-256, EC P-384 or RSA public key"


def algorithms_for(key: Any) -> tuple[str, ...]:
    """The JWT algorithms a credential signed with `key`'s private half may use.

    One key type, its own algorithms: a credential whose `alg` names another
    (ES256 against an Ed25519 key, RS256 against an EC key, any HMAC) is
    never handed to a verifier. Empty for a key no accepted algorithm uses.
    """
    if isinstance(key, Ed25519PublicKey | Ed448PublicKey):
        return ("EdDSA",)
    if isinstance(key, EllipticCurvePublicKey):
        if isinstance(key.curve, SECP256R1):
            return ("ES256",)
        if isinstance(key.curve, SECP384R1):
            return ("ES384",)
        return ()
    if isinstance(key, RSAPublicKey):
        return ("RS256", "PS256")
    return ()


def load(name: str, concession: Concession, base: Path) -> Eligibility:
    """The verification keys of a concession; ValueError says what is wrong."""
    if concession.issuer_key is not None:
        try:
            keys: tuple[Any, ...] = (load_pem_public_key(concession.issuer_key.encode()),)
        except ValueError as exc:
            raise ValueError(f"issuer_key is not a PEM public key: {exc}") from None
        if not algorithms_for(keys[0]):
            raise ValueError(f"issuer_key is not an {USABLE}")
    else:
        assert concession.issuer_jwks is not None
        path = base / concession.issuer_jwks
        try:
            keyset = jwt.PyJWKSet.from_dict(json.loads(path.read_text()))
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        except (ValueError, jwt.PyJWTError) as exc:
            raise ValueError(f"{path} is not a usable JWKS: {exc}") from None
        # Like PyJWKSet with key types it cannot use, keys of no accepted algorithm
        # (an HMAC secret, another curve) are left out; none left is an error.
        keys = tuple(k.key for k in keyset.keys if algorithms_for(k.key))
        if not keys:
            raise ValueError(f"{path} has no {USABLE}")
    return Eligibility(
        name,
        concession.discount,
        concession.description,
        concession.issuer,
        keys,
        concession.free_quota,
    )

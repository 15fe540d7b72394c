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
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.policy.schema import Concession, Quota


@dataclass(frozen=True, slots=True)
class Eligibility:
    name: str
    discount: int  # percent
    description: str
    issuer: str | None
    keys: tuple[Any, ...]  # public keys that may sign credentials
    free_quota: Quota | None = None  # counted per credential holder


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
    return Eligibility(
        name,
        concession.discount,
        concession.description,
        concession.issuer,
        keys,
        concession.free_quota,
    )

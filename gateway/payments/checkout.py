"""Checkouts: a payment request a person can pay from a phone.

A phone wallet pays an address and an amount; it knows nothing of BRC-121.
So each paywall page gets a checkout: a signed ticket (no server state)
naming the purchase, its price and its expiry, and a payee address made for
that ticket alone. The address is the BRC-29 key of the ticket for the
well-known "anyone" sender (private key 1), with the checkout id as the
derivation prefix and the ticket's issue time as the suffix: the cashier
then verifies and records the payment exactly as any other, and the server
key can spend it like any other receipt.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol
from urllib.parse import quote

from bsv import PrivateKey, PublicKey

from gateway.bsv.derivation import p2pkh_script, payee_key_for_sender
from gateway.tokens import Tokens

ANYONE = PrivateKey(1)  # BRC-42's "anyone": a sender whose key everybody knows
ANYONE_HEX = ANYONE.public_key().hex()
AUDIENCE = "farebox:checkout"
LIFETIME = 600  # seconds a checkout may be paid


@dataclass(frozen=True, slots=True)
class Checkout:
    id: str  # base64 of 12 random bytes: the derivation prefix
    service: str
    resource: str  # the path asked for
    method: str
    satoshis: int
    issued_ms: int  # Unix milliseconds: the derivation suffix's source
    expires: int  # Unix seconds

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires


def open_checkout(
    tokens: Tokens, service: str, resource: str, method: str, satoshis: int
) -> tuple[Checkout, str]:
    """A new checkout and its ticket (a signed token to put in URLs)."""
    now_ms = int(time.time() * 1000)
    checkout = Checkout(
        id=base64.b64encode(os.urandom(12)).decode(),
        service=service,
        resource=resource,
        method=method,
        satoshis=satoshis,
        issued_ms=now_ms,
        expires=now_ms // 1000 + LIFETIME,
    )
    claims = {
        "jti": checkout.id,
        "svc": service,
        "res": resource,
        "m": method,
        "sats": satoshis,
        "iat_ms": now_ms,
        "exp": checkout.expires,
    }
    return checkout, tokens.sign_claims(claims, AUDIENCE)


def read_ticket(tokens: Tokens, ticket: str, *, allow_expired: bool = False) -> Checkout | None:
    claims = tokens.read_claims(ticket, AUDIENCE, verify_exp=not allow_expired)
    if claims is None:
        return None
    try:
        return Checkout(
            id=str(claims["jti"]),
            service=str(claims["svc"]),
            resource=str(claims["res"]),
            method=str(claims["m"]),
            satoshis=int(claims["sats"]),
            issued_ms=int(claims["iat_ms"]),
            expires=int(claims["exp"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def suffix(checkout: Checkout) -> str:
    return base64.b64encode(str(checkout.issued_ms).encode()).decode()


def payee(server: PublicKey, checkout: Checkout) -> PublicKey:
    """The key this checkout is paid to (anyone can compute it; only the
    server can spend it)."""
    return payee_key_for_sender(server, ANYONE, checkout.id, suffix(checkout))


def locking_script(server: PublicKey, checkout: Checkout) -> bytes:
    return p2pkh_script(payee(server, checkout))


def payment_uri(address: str, satoshis: int, pay_url: str, label: str) -> str:
    """BIP-21 style: `bitcoin:<address>?sv&amount=<BSV>&label=…&r=<pay url>`.

    `r` is where a wallet may POST the transaction (BEEF or raw, bytes or
    hex) instead of broadcasting it itself.
    """
    amount = format(Decimal(satoshis) / Decimal(100_000_000), "f").rstrip("0").rstrip(".")
    return (
        f"bitcoin:{address}?sv&amount={amount}"
        f"&label={quote(label, safe='')}&r={quote(pay_url, safe='')}"
    )


class PaymentWatcher(Protocol):
    """Finds transactions paying a script, for wallets that do not post them."""

    async def payments_to(self, script: bytes) -> list[bytes]:
        """BEEFs of transactions with an output locked by `script` (newest last)."""
        ...

    async def close(self) -> None: ...

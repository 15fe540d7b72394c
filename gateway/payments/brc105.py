"""BRC-105 payments: `x-bsv-payment` on a BRC-103 authenticated request (AuthFetch).

payments/0105.md, as @bsv/sdk 2.1.0's AuthFetch sends it: the 402 names
the price (`x-bsv-payment-satoshis-required`) and a derivation prefix this
server issued (`x-bsv-payment-derivation-prefix`, a server nonce); the paid
retry carries `x-bsv-payment: {"derivationPrefix", "derivationSuffix" (a
client nonce, not a time), "transaction" (base64 Atomic BEEF)}`, paying the
BRC-29 key of (prefix, suffix) between the server key and the client's
authenticated identity key. The answer says `x-bsv-payment-satoshis-paid`.

Farebox checks more than the reference middleware, which trusts output 0,
never checks the amount and takes the same payment again: the payment
output is found by its script and must carry the price, the prefix must be
one this server issued to this identity key (nonces.py), the payment is
fresh when the prefix was issued within the payment window, and the txid is
claimed atomically like every other payment (cashier.py).
"""

from __future__ import annotations

import base64
import binascii
import json

from gateway.errors import PaymentError
from gateway.payments.remittance import Remittance
from gateway.peer import Peer
from gateway.peer.nonces import BadNonce, Nonces

HEADER = "x-bsv-payment"
VERSION = "1.0"
REQUIRED = "x-bsv-payment-satoshis-required"
PREFIX = "x-bsv-payment-derivation-prefix"
PAID = "x-bsv-payment-satoshis-paid"
MAX_SUFFIX = 128  # characters of a derivation suffix (AuthFetch: 64)


def from_brc105(value: str, peer: Peer | None, nonces: Nonces | None, max_bytes: int) -> Remittance:
    """An `x-bsv-payment` header -> Remittance (vout found later by script).

    Raises PaymentError: 400 `authentication-required` without a BRC-103
    identity, 400 `bad-payment-header` for what is not the BRC-105 JSON,
    413 for a transaction over `max_bytes`, 402 `unknown-prefix` for a
    prefix this server did not issue to this identity key.
    """
    if peer is None or nonces is None:
        raise PaymentError(
            "authentication-required",
            "x-bsv-payment is a BRC-105 payment: send it on a BRC-103 authenticated "
            "request (x-bsv-auth-*), or pay with BRC-121 headers",
            status=400,
        )
    if len(value) > max_bytes * 4 // 3 + 1024:
        raise PaymentError("beef-too-large", f"BEEF is larger than {max_bytes} bytes", status=413)
    try:
        fields = json.loads(value)
    except (ValueError, RecursionError):
        fields = None
    if not isinstance(fields, dict):
        raise _bad("x-bsv-payment must be a JSON object")
    prefix = fields.get("derivationPrefix")
    suffix = fields.get("derivationSuffix")
    transaction = fields.get("transaction")
    for name, field in (
        ("derivationPrefix", prefix),
        ("derivationSuffix", suffix),
        ("transaction", transaction),
    ):
        if not isinstance(field, str) or not field:
            raise _bad(f"x-bsv-payment lacks {name} (a string)")
    assert isinstance(prefix, str) and isinstance(suffix, str) and isinstance(transaction, str)
    if len(suffix) > MAX_SUFFIX:
        raise _bad(f"derivationSuffix is longer than {MAX_SUFFIX} characters")
    try:
        (prefix + suffix).encode("utf-8")
    except UnicodeEncodeError:
        raise _bad("derivationPrefix and derivationSuffix must be Unicode text") from None
    try:
        beef = base64.b64decode(transaction, validate=True)
    except (binascii.Error, ValueError):
        raise PaymentError(
            "malformed-beef", "transaction is not valid base64", status=400
        ) from None
    try:
        issued_ms = nonces.open_prefix(peer.key.serialize(), prefix)
    except BadNonce as exc:
        raise PaymentError("unknown-prefix", str(exc)) from None
    return Remittance(
        beef, peer.key, peer.identity, prefix, str(issued_ms), None, suffix, protocol="brc-105"
    )


def issued_prefix(value: str | None, peer: Peer, nonces: Nonces) -> str | None:
    """The prefix a refused `x-bsv-payment` used, if this server issued it to
    `peer`: offered again, so AuthFetch sends the same payment, not a new one."""
    if not value:
        return None
    try:
        fields = json.loads(value)
        prefix = fields["derivationPrefix"]
        nonces.open_prefix(peer.key.serialize(), prefix)
    except (ValueError, TypeError, KeyError, RecursionError, BadNonce):
        return None
    return prefix if isinstance(prefix, str) else None


def _bad(detail: str) -> PaymentError:
    return PaymentError("bad-payment-header", detail, status=400)

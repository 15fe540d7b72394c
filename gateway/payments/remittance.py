"""A payment as a client sends it, whatever the protocol, and its field checks.

Every intake adapter (payments/intake.py) turns what arrived — BRC-121
headers, the pay endpoint's JSON or query, a checkout's posted BEEF — into
one `Remittance`; the cashier then checks and takes that, never the wire form.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from bsv import PublicKey

from gateway.errors import PaymentError

_PUBKEY = re.compile(r"0[23][0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]{1,16}")
# Sender keys read lately (hex as sent -> key): a payer sends the same identity
# key with each payment, and reading one checks it is on the curve (a square
# root). Only keys that read without error are kept; the objects are not changed.
_SENDERS: OrderedDict[str, PublicKey] = OrderedDict()
_SENDERS_KEPT = 4096


@dataclass(frozen=True, slots=True)
class Rules:
    """How a protocol wants its payments judged where protocols differ.

    BRC-121 (the default): at least the price, a payment time within the
    cashier's window, and a payment sent again answered with its grant.
    x402 `exact` on `bsv:` (x402-foundation/x402 PR #2890): the exact
    price, its own window, and a txid seen before refused.
    """

    exact: bool = False  # the output carries the price exactly
    window: float | None = None  # seconds the payment time may be from now; None: the cashier's
    answer_again: bool = True  # a payment accepted before gets its grant back
    amount: int | None = None  # satoshis the client accepted to pay (x402): the output's


BRC121 = Rules()


@dataclass(frozen=True, slots=True)
class Remittance:
    """One payment: an Atomic BEEF paying the BRC-29 key of (prefix, suffix).

    `vout` names the paying output (BRC-121, x402), or is None when the
    protocol names none (BRC-105): the output paying the payee key is found.
    """

    beef: bytes
    sender: PublicKey
    sender_hex: str
    prefix: str  # BRC-29 derivation prefix (base64)
    time: str  # Unix milliseconds, decimal: when the payment was made or asked for
    vout: int | None
    suffix: str  # BRC-29 derivation suffix
    rules: Rules = BRC121
    protocol: str = "brc-121"  # how it arrived: "brc-121", "brc-105", "x402", "farebox"


def time_suffix(time_ms: str) -> str:
    """BRC-121: the derivation suffix is base64 of the ASCII time string."""
    return base64.b64encode(time_ms.encode("ascii")).decode()


@dataclass(frozen=True, slots=True)
class TopUp:
    """A payment that credits a prepaid tab instead of buying a grant."""

    tab: str | None  # the tab to top up; None opens a new one
    lasts: int  # seconds the tab's token lasts from now


FIELDS = ("beef", "sender", "nonce", "time", "vout")


def remittance(fields: Mapping[str, object], max_bytes: int) -> Remittance:
    """Check the fields of a payment and build it; base64 BEEF is decoded here.

    `fields` holds `beef` (base64 text or bytes), `sender` (compressed
    public key, hex), `nonce` (the derivation prefix, base64), `time` (Unix
    ms) and `vout`, from headers (always strings) or JSON (any type). A
    missing field is `402 missing-payment-field`; a field of the wrong JSON
    type is `400 bad-<field>` naming it; a value that cannot be a payment is
    402 with its reason (BRC-121: the client may pay again); BEEF over
    `max_bytes` is 413.
    """
    beef, sender, nonce = fields.get("beef"), fields.get("sender"), fields.get("nonce")
    time_ms, vout = fields.get("time"), fields.get("vout")
    missing = [
        n
        for n, v in (
            ("beef", beef),
            ("sender", sender),
            ("nonce", nonce),
            ("time", time_ms),
            ("vout", vout),
        )
        if v is None or v == ""
    ]
    if missing:
        raise PaymentError("missing-payment-field", f"payment lacks: {', '.join(missing)}")
    _typed("sender", sender, str)
    _typed("nonce", nonce, str)
    _typed("time", time_ms, str, int)
    _typed("vout", vout, str, int)
    _typed("beef", beef, str, bytes)
    assert isinstance(sender, str) and isinstance(nonce, str) and isinstance(beef, str | bytes)
    if not _PUBKEY.fullmatch(sender):
        raise PaymentError("bad-sender", "sender must be a compressed public key in hex")
    sender_key = _SENDERS.get(sender)
    if sender_key is None:
        try:
            sender_key = PublicKey(sender)
        except Exception:  # bsv-sdk raises assorted types for points off the curve
            raise PaymentError("bad-sender", "sender is not a valid public key") from None
        _SENDERS[sender] = sender_key
        if len(_SENDERS) > _SENDERS_KEPT:
            _SENDERS.popitem(last=False)
    if len(nonce) > 128 or not _is_base64(nonce):
        raise PaymentError("bad-nonce", "nonce must be base64 (at most 128 characters)")
    time_text = str(time_ms)
    if not _DIGITS.fullmatch(time_text):
        raise PaymentError("bad-time", "time must be Unix milliseconds as a decimal number")
    vout_text = str(vout)
    if not _DIGITS.fullmatch(vout_text) or int(vout_text) >= 2**32:
        raise PaymentError("bad-vout", "vout must be an output index")
    if isinstance(beef, str):
        if len(beef) > max_bytes * 4 // 3 + 4:
            raise PaymentError(
                "beef-too-large", f"BEEF is larger than {max_bytes} bytes", status=413
            )
        try:
            beef = base64.b64decode(beef, validate=True)
        except (binascii.Error, ValueError):
            raise PaymentError("malformed-beef", "BEEF is not valid base64", status=400) from None
    return Remittance(
        beef, sender_key, sender.lower(), nonce, time_text, int(vout_text), time_suffix(time_text)
    )


def _typed(name: str, value: object, *types: type) -> None:
    # bool is an int to Python, never to a client that meant a number.
    if isinstance(value, bool) or not isinstance(value, types):
        kinds = " or ".join(
            "a string" if t is str else "a number" if t is int else "bytes" for t in types
        )
        raise PaymentError(f"bad-{name}", f"`{name}` must be {kinds}", status=400)


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return bool(text)

"""x402 v2 payments, scheme `exact` on `bsv:*`: `PAYMENT-SIGNATURE` -> Remittance.

The wire format is x402 v2 (x402-foundation/x402: specs/x402-specification-v2.md,
specs/transports-v2/http.md) with the BSV `exact` scheme drafted in its
PR #2890 (specs/schemes/exact/scheme_exact_bsv.md), which is BRC-121 in x402's
envelope:

- a 402 carries `PAYMENT-REQUIRED`: base64 of `{x402Version: 2, error,
  resource: {url, description, mimeType}, accepts: [{scheme: "exact",
  network: "bsv:mainnet", amount (satoshis, a decimal string), asset: "BSV",
  payTo (the server's identity key, hex), maxTimeoutSeconds, extra}]}`;
  `extra.payloadFormat.kind` is `"brc29-beef"`, the name BRC-166 gives this
  mode beside its own `"p2pkh-rawtx"`;
- the paid retry carries `PAYMENT-SIGNATURE`: base64 of `{x402Version: 2,
  accepted (the requirements chosen, echoed), resource, payload:
  {transaction (base64 BEEF or Atomic BEEF), derivationPrefix (base64, at
  least 8 bytes), derivationSuffix (base64 of the Unix-ms time string),
  senderIdentityKey (compressed hex), outputIndex}}`, paying the BRC-29 key
  of (prefix, suffix) between `payTo` and the sender;
- success answers `PAYMENT-RESPONSE`: base64 of `{success: true, payer,
  transaction (txid), network}`; a refusal is a 402 with `success: false`
  and `errorReason` (challenge/protocols.py).

Where the draft differs from BRC-121 it is followed (`RULES`): the output
carries the amount exactly, the payment time may be `WINDOW` seconds ahead
and `WINDOW + MAX_TIMEOUT_SECONDS` behind, and a transaction seen before is
refused (`payment-reused`), never answered with its grant. `bip122:*`
network ids (the genesis block BSV shares with BTC and BCH) are refused.

Malformed input is `400 bad-payment-signature` with the offending field in
`field`; a well-formed payment this server will not take is 402 with its
reason; the cashier then checks the rest as for every payment (cashier.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, replace
from typing import Any

from bsv import PublicKey

from gateway.errors import PaymentError
from gateway.payments.remittance import Remittance, Rules

HEADER = "payment-signature"  # the paid retry
REQUIRED = "PAYMENT-REQUIRED"  # on every 402
RESPONSE = "PAYMENT-RESPONSE"  # on the answer to a payment, paid or refused
VERSION = 2
SCHEME = "exact"
ASSET = "BSV"
PAYLOAD_FORMAT = "brc29-beef"
DEFAULT_NETWORK = "bsv:mainnet"
WINDOW = 30  # seconds the payment time may be from now (the draft's default)
MAX_TIMEOUT_SECONDS = 60  # advertised settlement budget: the past-facing window grows by it
RULES = Rules(exact=True, window=WINDOW + MAX_TIMEOUT_SECONDS, answer_again=False)

# CAIP-2: namespace ":" reference ([-_a-zA-Z0-9]{1,32}); no id names a devnet,
# so any bsv:<name> may be configured.
NETWORK = re.compile(r"bsv:[-_a-zA-Z0-9]{1,32}")
_PUBKEY = re.compile(r"0[23][0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]{1,16}")
MIN_PREFIX_BYTES = 8  # the draft: a fresh random nonce of at least 8 bytes
MAX_PREFIX = 128  # characters of a derivation prefix or suffix
_JSON_OVERHEAD = 8192  # characters of an x402 payload besides its transaction

# Refusal reasons as the draft and the core spec name them (SettleResponse
# `errorReason`); other reasons are Farebox's own, as in problem+json.
ERROR_REASONS = {
    "payment-reused": "duplicate_settlement",
    "amount-not-exact": "invalid_exact_bsv_payload_amount_mismatch",
    "underpaid": "invalid_exact_bsv_payload_amount_mismatch",
    "amount-mismatch": "invalid_exact_bsv_payload_amount_mismatch",
    "stale-time": "invalid_exact_bsv_payload_timestamp_out_of_window",
    "wrong-payee": "invalid_exact_bsv_payload_destination_mismatch",
    "wrong-pay-to": "invalid_exact_bsv_payload_payee_mismatch",
    "wrong-network": "invalid_network",
    "ambiguous-network": "invalid_network",
    "wrong-asset": "invalid_exact_bsv_payload_asset",
    "unsupported-scheme": "unsupported_scheme",
    "x402-version-unsupported": "invalid_x402_version",
    "bad-vout": "invalid_exact_bsv_payload_output_missing",
}


def network_problem(network: str) -> str | None:
    """Why `network` cannot be an x402 BSV network id, or None when it can be."""
    if network.startswith("bip122:"):
        return (
            f"{network} is a bip122 (genesis block) id, which BSV shares with BTC and BCH: "
            "use the bsv namespace (bsv:mainnet, bsv:testnet)"
        )
    if not NETWORK.fullmatch(network):
        return (
            f"{network!r} is not a BSV network id: bsv:mainnet, bsv:testnet, or bsv:<name> "
            "(letters, digits, - and _, at most 32) for a devnet"
        )
    return None


@dataclass(frozen=True, slots=True)
class X402Remittance(Remittance):
    """An x402 payment: a Remittance and the network it was accepted on."""

    network: str = DEFAULT_NETWORK


def requirements(
    satoshis: int,
    network: str,
    pay_to: str,
    url: str,
    description: str | None,
    error: str,
) -> dict[str, Any]:
    """The `PaymentRequired` object of a 402 asking `satoshis` (before base64)."""
    resource: dict[str, Any] = {"url": url}
    if description:
        resource["description"] = description
    return {
        "x402Version": VERSION,
        "error": error,
        "resource": resource,
        "accepts": [
            {
                "scheme": SCHEME,
                "network": network,
                "amount": str(satoshis),
                "asset": ASSET,
                "payTo": pay_to,
                "maxTimeoutSeconds": MAX_TIMEOUT_SECONDS,
                "extra": {"payloadFormat": {"kind": PAYLOAD_FORMAT}},
            }
        ],
    }


def encode(value: dict[str, Any]) -> str:
    """An x402 header value: base64 of compact JSON."""
    return base64.b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()


def settled(payment: X402Remittance, txid: str) -> dict[str, str]:
    """The headers of a paid answer: `PAYMENT-RESPONSE` with `success: true`."""
    return {
        RESPONSE: encode(
            {
                "success": True,
                "payer": payment.sender_hex,
                "transaction": txid,
                "network": payment.network,
            }
        )
    }


def refused(value: str | None, reason: str, detail: str, network: str) -> str:
    """`PAYMENT-RESPONSE` for a refused payment (`transaction` is empty, as the spec says)."""
    answer: dict[str, Any] = {
        "success": False,
        "errorReason": ERROR_REASONS.get(reason, reason),
        "errorMessage": detail,
        "transaction": "",
        "network": network,
    }
    payer = _payer(value)
    if payer is not None:
        answer["payer"] = payer
    return encode(answer)


def _payer(value: str | None) -> str | None:
    """The sender key a PAYMENT-SIGNATURE names, if it can be read (best effort)."""
    if not value or len(value) > 1 << 21:
        return None
    try:
        sender = json.loads(base64.b64decode(value, validate=True))["payload"]["senderIdentityKey"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    return sender.lower() if isinstance(sender, str) and _PUBKEY.fullmatch(sender) else None


def from_x402(value: str, max_bytes: int, network: str, server: str) -> X402Remittance:
    """A `PAYMENT-SIGNATURE` value -> Remittance paying `vout = outputIndex`.

    `network` is the one this server takes payments on, `server` its identity
    key (hex). The amount accepted rides in the Remittance's rules: the
    cashier holds the output to it and to today's price (verify.check_output).
    Raises PaymentError: 400 `bad-payment-signature` naming the field
    (`field`), 413 for a transaction over `max_bytes`, 402 for a payment on
    other terms (version, scheme, network, asset, payee, a time ahead of the
    window).
    """
    if len(value) > (max_bytes * 4 // 3 + _JSON_OVERHEAD) * 4 // 3:
        raise PaymentError("beef-too-large", f"BEEF is larger than {max_bytes} bytes", status=413)
    try:
        text = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("PAYMENT-SIGNATURE", "PAYMENT-SIGNATURE is not base64") from None
    try:
        signed = json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _bad("PAYMENT-SIGNATURE", "PAYMENT-SIGNATURE is not base64 of JSON") from None
    if not isinstance(signed, dict):
        raise _bad("PAYMENT-SIGNATURE", "PAYMENT-SIGNATURE must be a JSON object")
    version = signed.get("x402Version")
    if not _is_int(version):
        raise _bad("x402Version", "x402Version must be a number")
    if version != VERSION:
        raise PaymentError(
            "x402-version-unsupported", f"x402Version {version}: this server speaks x402 v2"
        )
    accepted = _object(signed, "accepted")
    payload = _object(signed, "payload")
    _terms(accepted, network, server)

    beef = _base64(payload, "transaction", max_bytes)
    prefix = _text(payload, "derivationPrefix", MAX_PREFIX)
    if len(_decoded(prefix, "derivationPrefix")) < MIN_PREFIX_BYTES:
        raise _bad("payload.derivationPrefix", "derivationPrefix must be at least 8 bytes")
    suffix = _text(payload, "derivationSuffix", MAX_PREFIX)
    time_ms = _decoded(suffix, "derivationSuffix")
    if not _DIGITS.fullmatch(time_ms.decode("ascii", "replace")):
        raise _bad(
            "payload.derivationSuffix",
            "derivationSuffix must be base64 of the payment time in Unix milliseconds",
        )
    sender = _text(payload, "senderIdentityKey", 66)
    if not _PUBKEY.fullmatch(sender):
        raise _bad("payload.senderIdentityKey", "senderIdentityKey must be a compressed key, hex")
    try:
        sender_key = PublicKey(sender)
    except Exception:  # bsv-sdk raises assorted types for points off the curve
        raise _bad("payload.senderIdentityKey", "senderIdentityKey is not a public key") from None
    vout = payload.get("outputIndex")
    if not _is_int(vout) or not 0 <= vout < 2**32:
        raise _bad("payload.outputIndex", "outputIndex must be an output index (a number)")

    ahead = int(time_ms) / 1000 - time.time()
    if ahead > WINDOW:
        raise PaymentError(
            "stale-time", f"payment time is {ahead:.0f} s ahead of now (window {WINDOW} s)"
        )
    return X402Remittance(
        beef,
        sender_key,
        sender.lower(),
        prefix,
        time_ms.decode("ascii"),
        vout,
        suffix,
        replace(RULES, amount=int(accepted["amount"])),
        "x402",
        network,
    )


def _terms(accepted: dict[str, Any], network: str, server: str) -> None:
    """The requirements the client accepted must be ours; raises PaymentError."""
    scheme = _text(accepted, "scheme", 64, where="accepted")
    claimed = _text(accepted, "network", 64, where="accepted")
    asset = accepted.get("asset", ASSET)
    if not isinstance(asset, str):
        raise _bad("accepted.asset", "accepted.asset must be a string")
    pay_to = _text(accepted, "payTo", 66, where="accepted")
    amount = accepted.get("amount")
    if not isinstance(amount, str) or not _DIGITS.fullmatch(amount):
        raise _bad("accepted.amount", "accepted.amount must be satoshis as a decimal string")
    extra = accepted.get("extra", {})
    if not isinstance(extra, dict):
        raise _bad("accepted.extra", "accepted.extra must be an object")
    kind = extra.get("payloadFormat", {})
    kind = kind.get("kind", PAYLOAD_FORMAT) if isinstance(kind, dict) else kind
    if scheme != SCHEME:
        raise PaymentError("unsupported-scheme", f"scheme {scheme!r}: this server takes 'exact'")
    if claimed != network:
        if claimed.startswith("bip122:"):
            raise PaymentError("ambiguous-network", network_problem(claimed) or "")
        raise PaymentError(
            "wrong-network",
            f"accepted.network is {claimed!r}; this server takes payments on {network}",
        )
    if asset.upper() != ASSET:
        raise PaymentError("wrong-asset", f"asset {asset!r}: this scheme pays native BSV only")
    if kind != PAYLOAD_FORMAT:
        raise PaymentError(
            "unsupported-scheme", f"payloadFormat {kind!r}: this server takes {PAYLOAD_FORMAT!r}"
        )
    if pay_to.lower() != server.lower():
        raise PaymentError(
            "wrong-pay-to", f"accepted.payTo is {pay_to}; this server's identity key is {server}"
        )


def _object(parent: dict[str, Any], name: str) -> dict[str, Any]:
    value = parent.get(name)
    if not isinstance(value, dict):
        raise _bad(name, f"{name} must be a JSON object")
    return value


def _text(parent: dict[str, Any], name: str, most: int, where: str = "payload") -> str:
    value = parent.get(name)
    if not isinstance(value, str) or not value:
        raise _bad(f"{where}.{name}", f"{where}.{name} must be a non-empty string")
    if len(value) > most:
        raise _bad(f"{where}.{name}", f"{where}.{name} is longer than {most} characters")
    return value


def _decoded(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"payload.{name}", f"{name} is not base64") from None


def _base64(parent: dict[str, Any], name: str, max_bytes: int) -> bytes:
    value = parent.get(name)
    if not isinstance(value, str) or not value:
        raise _bad(f"payload.{name}", f"payload.{name} must be a non-empty string")
    if len(value) > max_bytes * 4 // 3 + 4:
        raise PaymentError("beef-too-large", f"BEEF is larger than {max_bytes} bytes", status=413)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PaymentError(
            "malformed-beef", "payload.transaction is not valid base64", status=400
        ) from None


def _is_int(value: object) -> bool:
    # bool is an int to Python, never to a client that meant a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(field: str, detail: str) -> PaymentError:
    return PaymentError("bad-payment-signature", detail, status=400, field=field)

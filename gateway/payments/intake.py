"""Every way a payment arrives, turned into one Remittance and taken one way.

The adapters read a protocol's wire form and nothing else:
- `from_headers`: BRC-121 `x-bsv-beef / -sender / -nonce / -time / -vout`
  on the priced request itself (bitcoin-sv/BRCs payments/0121.md);
- `from_brc105` (brc105.py): BRC-105 `x-bsv-payment` on a BRC-103
  authenticated request (AuthFetch);
  `from_request` picks the adapter for a priced request's headers;
- `from_fields`: the pay endpoint's JSON body, or its query beside raw BEEF;
- `from_checkout`: a transaction posted to (or found on chain for) a
  checkout: the payee and the price are the checkout's. A checkout's
  expiry is the desk's to enforce (endpoints/checkout.py): a payment found
  within the grace period after it is taken here all the same.

Then `take` runs the cashier (every check, the atomic claim, broadcast,
receipt, token: cashier.py) and the one admission decision (admission.py)
on the grant it returns — new or answered from an earlier claim — so a
resent payment opens only what its grant opens as a token.

To add a protocol (BRC-105, x402): write its `from_*` adapter returning a
Remittance, build its Purchase with `purchase`, call `take`, and add its
challenge headers in challenge/. Nothing else changes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bsv import PublicKey, Transaction

from gateway.bsv.beef import read_beef
from gateway.errors import PaymentError
from gateway.payments import brc105, x402
from gateway.payments.admission import Revoked, Wanted, admit
from gateway.payments.cashier import Accepted, Cashier
from gateway.payments.checkout import ANYONE, ANYONE_HEX, Checkout, locking_script
from gateway.payments.remittance import FIELDS, Remittance, TopUp, remittance, time_suffix
from gateway.payments.verify import Expectation, Verified, check_roots, verify_payment
from gateway.peer import Peer
from gateway.peer.nonces import Nonces
from gateway.policy import Match
from gateway.store import Outcome, StoreUnavailable

log = logging.getLogger("farebox.payments")

HEADERS = tuple("x-bsv-" + name for name in FIELDS)  # BRC-121


@dataclass(frozen=True, slots=True)
class Purchase:
    """What a payment is offered for: the matched request and its terms."""

    match: Match
    method: str
    price: int  # satoshis: the price, or the smallest top-up of a tab
    top_up: TopUp | None = None  # a metered route: credit a tab instead of a grant
    fresh: bool = True  # hold the payment's time to the freshness window

    @property
    def wanted(self) -> Wanted:
        return Wanted.of(self.match, self.method)


class Underpaid(PaymentError):
    """A checkout paid less than its price: nothing was claimed, a full payment may follow."""

    def __init__(self, paid: int, price: int) -> None:
        super().__init__("underpaid", f"the payment is {paid} satoshis; the price is {price}")
        self.paid = paid


def purchase(
    match: Match, method: str, price: int, *, tab: str | None = None, fresh: bool = True
) -> Purchase:
    """The terms of paying for `match`: a grant, or for a metered route a tab top-up.

    `tab` names the tab to top up (from a presented tab token); None opens one.
    """
    tabs = match.service.service.tabs
    top_up = None
    if match.route.route.meter is not None and tabs is not None:
        top_up = TopUp(tab, tabs.lasts)
    return Purchase(match, method.upper(), price, top_up, fresh)


def has_payment(headers: Mapping[str, str]) -> bool:
    """Whether a request carries a payment: BRC-121 headers (any of them), BRC-105's
    `x-bsv-payment` or x402's `PAYMENT-SIGNATURE`."""
    return (
        brc105.HEADER in headers
        or x402.HEADER in headers
        or any(name in headers for name in HEADERS)
    )


def from_request(
    headers: Mapping[str, str],
    max_bytes: int,
    peer: Peer | None,
    nonces: Nonces | None,
    *,
    x402_network: str,
    server: str,
) -> Remittance:
    """The payment on a priced request, whichever protocol carries it; raises PaymentError.

    `peer` is the request's BRC-103 identity (None: unauthenticated) and
    `nonces` what checks the BRC-105 prefixes this server issued;
    `x402_network` and `server` (identity key, hex) are the terms x402
    payments are held to (Services.x402_network, Services.server_key).
    One protocol per request: BRC-105, else x402, else BRC-121.
    """
    value = headers.get(brc105.HEADER)
    if value is not None:
        return brc105.from_brc105(value, peer, nonces, max_bytes)
    value = headers.get(x402.HEADER)
    if value is not None:
        return x402.from_x402(value, max_bytes, x402_network, server)
    return from_headers(headers, max_bytes)


def paid_headers(payment: Remittance, accepted: Accepted) -> dict[str, str]:
    """What the answer to a paid request says of the payment, in its protocol's words."""
    if payment.protocol == "brc-105":
        return {brc105.PAID: str(accepted.receipt.satoshis)}
    if isinstance(payment, x402.X402Remittance):
        return x402.settled(payment, accepted.receipt.txid)
    return {}


def from_headers(headers: Mapping[str, str], max_bytes: int) -> Remittance:
    """BRC-121 headers (`x-bsv-beef`, `-sender`, `-nonce`, `-time`, `-vout`) -> Remittance.

    Raises PaymentError.
    """
    return remittance({name: headers.get("x-bsv-" + name) for name in FIELDS}, max_bytes)


def from_fields(fields: Mapping[str, Any], max_bytes: int) -> Remittance:
    """The pay endpoint's fields (JSON, or query + raw BEEF) -> Remittance; raises PaymentError.

    A field that cannot be read is a malformed request here (400 naming the
    field), not a payment the client may retry as it is.
    """
    try:
        return remittance(fields, max_bytes)
    except PaymentError as exc:
        if exc.status == 402 and exc.reason.startswith("bad-"):
            raise PaymentError(exc.reason, exc.detail, status=400) from None
        raise


def from_checkout(
    server: PublicKey, checkout: Checkout, beef: bytes, cashier: Cashier
) -> Remittance:
    """A transaction paying a checkout's address -> Remittance; raises PaymentError.

    The payee is the checkout's own BRC-29 key for the "anyone" sender
    (payments/checkout.py), so the output is found by its script, and a
    payment below the checkout's price is refused before anything is claimed.
    """
    subject = read_beef(beef, cashier.beef_limits).subject
    vout, paid = _checkout_output(subject, locking_script(server, checkout))
    if paid < checkout.satoshis:
        raise Underpaid(paid, checkout.satoshis)
    issued = str(checkout.issued_ms)
    return Remittance(
        beef, ANYONE.public_key(), ANYONE_HEX, checkout.id, issued, vout, time_suffix(issued)
    )


def _checkout_output(subject: Transaction, script: bytes) -> tuple[int, int]:
    """(vout, satoshis) of the first output locked by a checkout's `script`; PaymentError."""
    for vout, out in enumerate(subject.outputs):
        if out.locking_script.serialize() == script:
            return vout, out.satoshis or 0
    raise PaymentError("wrong-payee", "no output of this transaction pays this checkout")


async def checkout_payment(
    cashier: Cashier, server: PublicKey, checkout: Checkout, beef: bytes
) -> Verified:
    """Check that `beef` really pays this checkout, whatever the amount (for the refund list).

    For a payment the cashier would not take (too little, a checkout paid
    already, one no longer for sale, one already in a block): a transaction
    in a block is proven by its merkle path against the chain tracker; any
    other passes every check a payment passes (payments/verify.py) for the
    amount it pays. Nothing is claimed or broadcast. Raises PaymentError
    (not a valid payment to this checkout), or ChainError (cannot be checked now).
    """
    parsed = read_beef(beef, cashier.beef_limits)
    subject = parsed.subject
    script = locking_script(server, checkout)
    vout, paid = _checkout_output(subject, script)
    if subject.merkle_path is not None:
        await check_roots([subject], cashier.tracker)
        return Verified(subject.txid(), vout, paid, subject)
    return await verify_payment(
        parsed, Expectation(paid, script, vout), cashier.tracker, cashier.ancestry
    )


async def take(
    cashier: Cashier, revocations: Revoked | None, payment: Remittance, bought: Purchase
) -> Accepted:
    """Take a payment for a purchase, then admit its grant; raises PaymentError.

    A payment accepted before comes back with its grant only if that grant
    admits this request (`payment-reused` or `grant-revoked` otherwise).
    StoreUnavailable propagates from the revocation check. Every payment
    taken is logged here (`log_refused` is for the callers' refusals).
    """
    accepted = await cashier.accept(
        payment, bought.match, bought.method, bought.price, bought.top_up, fresh=bought.fresh
    )
    # A grant minted just now is for this very purchase and cannot have been
    # revoked yet; one answered from an earlier claim is asked like a token.
    await admit(accepted.grant, bought.wanted, revocations if accepted.repeated else None)
    service, route = bought.match.service.name, bought.match.route.scope
    receipt = accepted.receipt
    log.info(
        "payment %s: %s %s %d sat txid %s:%d",
        "accepted again" if accepted.repeated else "accepted",
        service, route, receipt.satoshis, receipt.txid, receipt.vout,
        extra={"service": service, "route": route, "satoshis": receipt.satoshis,
               "txid": receipt.txid, "vout": receipt.vout, "repeated": accepted.repeated},
    )  # fmt: skip
    return accepted


def log_refused(match: Match, satoshis: int, refused: PaymentError) -> None:
    """Log a payment refused for `match` (asked `satoshis`): while reading it
    from the request or while taking it. Never the payer, never the payment."""
    service, route = match.service.name, match.route.scope
    log.info(
        "payment refused: %s %s asked %d sat: %s",
        service, route, satoshis, refused.reason,
        extra={"service": service, "route": route, "satoshis": satoshis,
               "reason": refused.reason},
    )  # fmt: skip


def checkout_key(checkout: Checkout) -> str:
    """The claim key of a checkout: paid by one transaction only."""
    return f"checkout:{checkout.id}"


async def take_checkout(
    cashier: Cashier,
    revocations: Revoked | None,
    server: PublicKey,
    checkout: Checkout,
    match: Match,
    beef: bytes,
) -> Accepted:
    """Accept one transaction for a checkout; raises PaymentError.

    The checkout is claimed for the first transaction that pays it: a second
    payment is refused (`checkout-paid`) before it is broadcast.
    """
    payment = from_checkout(server, checkout, beef, cashier)
    txid = read_beef(beef, cashier.beef_limits).subject.txid()
    key = checkout_key(checkout)
    try:
        claim = await cashier.store.claim(key, txid)
    except StoreUnavailable:
        raise PaymentError("store-unavailable", "try again shortly", status=503) from None
    if claim.outcome is Outcome.CONFLICT:
        raise PaymentError(
            "checkout-paid", "this checkout was paid by another transaction", status=409
        )
    bought = purchase(match, checkout.method, checkout.satoshis, fresh=False)
    try:
        accepted = await take(cashier, revocations, payment, bought)
    except BaseException:
        # Not taken (refused, unknown, or a bug): the checkout stays open
        # for this or another transaction.
        if claim.outcome is Outcome.NEW:
            with contextlib.suppress(StoreUnavailable):
                await cashier.store.release(key, txid)
        raise
    if claim.outcome is Outcome.NEW or claim.receipt is None:
        try:
            await cashier.store.complete(key, accepted.receipt, accepted.token)
        except StoreUnavailable:
            # Taken but not yet recorded for the checkout: the next poll (or
            # the same post again) finds the payment accepted and records it.
            raise PaymentError("store-unavailable", "try again shortly", status=503) from None
    return accepted


async def checkout_taken(
    cashier: Cashier, revocations: Revoked | None, checkout: Checkout, match: Match
) -> Accepted | None:
    """The grant a completed checkout bought, admitted again; None while unpaid.

    Raises PaymentError when that grant no longer opens the resource
    (revoked), StoreUnavailable when the store cannot say.
    """
    key = checkout_key(checkout)
    receipt = await cashier.store.receipt(key)
    if receipt is None:
        return None
    claim = await cashier.store.claim(key, receipt.txid)
    if claim.token is None:
        return None
    verified = cashier.tokens.verify(claim.token)
    if verified is None:
        return None
    await admit(verified[0], Wanted.of(match, checkout.method), revocations)
    return Accepted(verified[0], claim.token, receipt, True)

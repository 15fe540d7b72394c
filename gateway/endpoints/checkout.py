"""The checkout desk: where a checkout's payment arrives and its status is asked.

`POST /.well-known/farebox/checkout/<ticket>`: a wallet that scanned the QR
code posts the transaction (BEEF, as bytes or hex). `GET` on the same URL is
what the page polls: pending, paid (the answer sets the grant's cookie),
expired, or what went wrong. With a payment watcher configured, a status
request also looks on chain for a payment to the checkout's address, for
wallets that broadcast themselves instead of posting.

A checkout is paid once: its id is claimed for the first transaction that
pays it, and a second payment is refused before it is broadcast, so nothing
is charged twice.
"""

from __future__ import annotations

import binascii
import json
import logging
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from bsv import PublicKey

from gateway.bsv.beef import read_beef
from gateway.edge.paths import PathError, canonicalize
from gateway.edge.problems import answer, payments_disabled, problem
from gateway.payments.cashier import Accepted, Remittance, TopUp
from gateway.payments.checkout import ANYONE, ANYONE_HEX, Checkout, locking_script, read_ticket
from gateway.payments.errors import PaymentError
from gateway.pipeline.credentials import token_headers
from gateway.policy import Match, NoMatch
from gateway.store import Outcome, StoreUnavailable

if TYPE_CHECKING:
    from gateway.pipeline.gateway import Gateway

log = logging.getLogger("farebox.checkout")

PREFIX = "/.well-known/farebox/checkout/"


class Underpaid(PaymentError):
    def __init__(self, paid: int, price: int) -> None:
        super().__init__("underpaid", f"the payment is {paid} satoshis; the price is {price}")
        self.paid = paid


class PaymentWatcher(Protocol):
    """Finds transactions paying a script, for wallets that do not post them."""

    async def payments_to(self, script: bytes) -> list[bytes]:
        """BEEFs of transactions with an output locked by `script` (newest last)."""
        ...

    async def close(self) -> None: ...


async def handle(gw: Gateway, request: web.BaseRequest, ticket: str) -> web.StreamResponse:
    if gw.cashier is None or gw.tokens is None:
        return payments_disabled()
    checkout = read_ticket(gw.tokens, ticket, allow_expired=True)
    if checkout is None:
        return problem(404, "no-checkout", "No such checkout", "this checkout link is not valid")
    match = _match(gw, request, checkout)
    if match is None:
        return problem(
            410, "checkout-gone", "Nothing to pay for", "the resource is no longer for sale"
        )
    if request.method == "POST":
        return await _posted(gw, request, checkout, match)
    if request.method in ("GET", "HEAD"):
        return await _status(gw, checkout, match)
    return problem(
        405,
        "method-not-allowed",
        "Method not allowed",
        "GET or POST",
        headers={"Allow": "GET, POST"},
    )


def _match(gw: Gateway, request: web.BaseRequest, checkout: Checkout) -> Match | None:
    try:
        target = canonicalize(checkout.resource)
    except PathError:
        return None
    match = gw.policy.current.match(request.host, target, checkout.method)
    if isinstance(match, NoMatch) or match.service.name != checkout.service:
        return None
    return match


async def _posted(
    gw: Gateway, request: web.BaseRequest, checkout: Checkout, match: Match
) -> web.StreamResponse:
    assert gw.cashier is not None
    limit = gw.cashier.beef_limits.max_bytes
    data = await request.content.read(limit * 2 + 2)
    if len(data) > limit * 2:
        return problem(413, "beef-too-large", "Payment too large", f"at most {limit} bytes")
    beef = _bytes_of(data)
    if beef is None:
        return problem(400, "malformed-beef", "Bad payment", "post the transaction as BEEF")
    if checkout.expired:
        return answer({"status": "expired"}, status=410)
    try:
        accepted = await take(gw, checkout, match, beef)
    except PaymentError as exc:
        extra = {"paid": exc.paid, "price": checkout.satoshis} if isinstance(exc, Underpaid) else {}
        return problem(exc.status, exc.reason, "Payment not taken", exc.detail, **extra)
    return _paid(gw, accepted)


async def _status(gw: Gateway, checkout: Checkout, match: Match) -> web.StreamResponse:
    assert gw.cashier is not None
    try:
        done = await gw.cashier.store.receipt(_key(checkout))
    except StoreUnavailable:
        return answer({"status": "pending", "detail": "store unavailable"}, status=503)
    if done is not None:
        accepted = await _accepted_before(gw, checkout, match)
        if accepted is not None:
            return _paid(gw, accepted)
    if checkout.expired:
        return answer({"status": "expired"})
    watcher: PaymentWatcher | None = gw.watcher
    if watcher is not None:
        script = locking_script(PublicKey(gw.server_key), checkout)
        try:
            found = await watcher.payments_to(script)
        except Exception as exc:  # a chain API outage must not break the page
            log.warning("payment watcher failed: %s", exc)
            found = []
        outcome: dict[str, Any] = {"status": "pending"}
        for beef in found:
            try:
                return _paid(gw, await take(gw, checkout, match, beef))
            except PaymentError as exc:
                outcome = _refusal(exc, checkout)
        return answer(outcome)
    return answer({"status": "pending"})


async def take(gw: Gateway, checkout: Checkout, match: Match, beef_bytes: bytes) -> Accepted:
    """Accept one transaction for a checkout; raises PaymentError."""
    cashier = gw.cashier
    assert cashier is not None
    beef = read_beef(beef_bytes, cashier.beef_limits)
    script = locking_script(PublicKey(gw.server_key), checkout)
    outputs = beef.subject.outputs
    vout = next(
        (i for i, out in enumerate(outputs) if out.locking_script.serialize() == script), None
    )
    if vout is None:
        raise PaymentError("wrong-payee", "no output of this transaction pays this checkout")
    paid = outputs[vout].satoshis or 0
    if paid < checkout.satoshis:
        raise Underpaid(paid, checkout.satoshis)  # before any claim: a full payment may follow
    txid = beef.subject.txid()
    key = _key(checkout)
    try:
        claim = await cashier.store.claim(key, txid)
    except StoreUnavailable:
        raise PaymentError("store-unavailable", "try again shortly", status=503) from None
    if claim.outcome is Outcome.CONFLICT:
        raise PaymentError(
            "checkout-paid", "this checkout was paid by another transaction", status=409
        )
    payment = Remittance(
        beef_bytes, ANYONE.public_key(), ANYONE_HEX, checkout.id, str(checkout.issued_ms), vout
    )
    tabs = match.service.service.tabs
    top_up = TopUp(None, tabs.lasts) if match.route.route.meter is not None and tabs else None
    try:
        accepted = await cashier.accept(
            payment, match, checkout.method, checkout.satoshis, top_up, fresh=False
        )
    except PaymentError:
        if claim.outcome is Outcome.NEW:
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


async def _accepted_before(gw: Gateway, checkout: Checkout, match: Match) -> Accepted | None:
    """The grant a completed checkout bought (its claim holds the token)."""
    assert gw.cashier is not None and gw.tokens is not None
    receipt = await gw.cashier.store.receipt(_key(checkout))
    if receipt is None:
        return None
    claim = await gw.cashier.store.claim(_key(checkout), receipt.txid)
    if claim.token is None:
        return None
    verified = gw.tokens.verify(claim.token)
    if verified is None:
        return None
    return Accepted(verified[0], claim.token, receipt, True)


def _paid(gw: Gateway, accepted: Accepted) -> web.Response:
    import time

    headers = token_headers(accepted, secure=gw.cookie_secure, now=int(time.time()))
    headers["Cache-Control"] = "no-store"
    body = {"status": "paid", "txid": accepted.receipt.txid, "expires": accepted.grant.expires}
    return web.Response(
        body=json.dumps(body).encode(), content_type="application/json", headers=headers
    )


def _refusal(exc: PaymentError, checkout: Checkout) -> dict[str, Any]:
    if isinstance(exc, Underpaid):
        return {"status": "underpaid", "paid": exc.paid, "price": checkout.satoshis}
    if exc.reason in ("checkout-paid",):
        return {"status": "pending"}
    return {"status": "refused", "reason": exc.reason, "detail": exc.detail}


def _key(checkout: Checkout) -> str:
    return f"checkout:{checkout.id}"


def _bytes_of(data: bytes) -> bytes | None:
    text = data.strip()
    if text[:1] in (b"0",) and all(c in b"0123456789abcdefABCDEF" for c in text):
        try:
            return binascii.unhexlify(text)
        except binascii.Error:
            return None
    return data or None

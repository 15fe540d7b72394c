"""The checkout desk: where a checkout's payment arrives and its status is asked.

`POST /.well-known/farebox/checkout/<id>`: a wallet that scanned the QR
code posts the transaction (BEEF, as bytes or hex). `<id>` is the page's
short checkout id, whose ticket the store keeps (payments/checkout.py), or a
ticket itself (404 `checkout-unknown` for a short id the store does not
know: never given, or long expired). `GET` on the same URL is what the page
polls: pending, paid (the answer sets the grant's cookie), expired, or what
went wrong. With a payment watcher configured, a status
request also looks on chain for a payment to the checkout's address, for
wallets that broadcast themselves instead of posting.

A wallet may broadcast just as the checkout expires, when the page has
stopped asking. So a polled checkout is also kept on the store's watch list
(payments/checkout.py, `CheckoutWatcher`), and for the grace period after
its expiry:
- a status request still looks on chain, and a payment found is taken as a
  timely one would be: the page gets its grant;
- `watch_late`, a background task in each worker, looks for payments to
  watched checkouts now and then (one worker per round, a few checkouts per
  round, each leased to one looker) and takes what it finds the same way.
  A payment recorded so, whose grant nobody collected, goes on the refund
  list (store/refunds.py) beside its receipt; so does a payment the cashier
  cannot take (too little, a second one, no longer for sale, already in a
  block, a transaction that bought something else already), with the
  derivation data to sweep it, so the admin can refund or honour it. Each
  output is listed once. A checkout found paid and recorded gets one more
  look, for other payments to it (a phone that paid twice), then is no
  longer watched.

A checkout whose listed payment the admin settled `refunded` answers
{"status": "refunded"} and never its grant (which the admin's settlement
revoked): the money and the grant never both go back.

All of it goes through the one intake (payments/intake.py): a checkout is
paid once, and a grant it bought is handed out only while admission allows it.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import time
from typing import Any

from aiohttp import web
from bsv import PublicKey

from gateway.bsv.beef import read_beef
from gateway.edge.bodies import read_body
from gateway.edge.paths import PathError, canonicalize
from gateway.edge.problems import answer, payments_disabled, problem
from gateway.errors import PaymentError
from gateway.payments.cashier import Accepted
from gateway.payments.checkout import (
    ANYONE_HEX,
    LOOK_RATE,
    Checkout,
    CheckoutWatcher,
    Watched,
    kept_ticket,
    locking_script,
    next_look,
    payee,
    read_ticket,
    suffix,
)
from gateway.payments.intake import (
    Underpaid,
    checkout_key,
    checkout_payment,
    checkout_taken,
    log_refused,
    take_checkout,
)
from gateway.pipeline.credentials import token_headers
from gateway.policy import Match, NoMatch
from gateway.services import Services
from gateway.store import StoreUnavailable
from gateway.store import refunds as why
from gateway.store.receipts import Receipt
from gateway.store.refunds import Refund, outpoint

log = logging.getLogger("farebox.checkout")

ROUND = 2  # seconds between rounds of the late watch (one worker of all has each round)
BATCH = ROUND * LOOK_RATE  # checkouts looked at per round: LOOK_RATE, whatever the scale
LEASE = 120  # seconds a checkout taken for a look is nobody else's
ROUND_KEY = "farebox:late-checkouts"  # the fixed-window counter that hands out rounds


async def handle(services: Services, request: web.BaseRequest, ticket: str) -> web.StreamResponse:
    """Take a posted payment for the checkout, or say where it stands."""
    if services.cashier is None or services.tokens is None:
        return payments_disabled()
    found = await kept_ticket(services.store, ticket)  # the QR code's short id, or a ticket
    if found is None:
        return problem(
            404,
            "checkout-unknown",
            "No such payment request",
            "this payment request is unknown or expired some time ago: reload the page "
            "for a new one",
        )
    ticket = found
    checkout = read_ticket(services.tokens, ticket, allow_expired=True)
    if checkout is None:
        return problem(404, "no-checkout", "No such checkout", "this checkout link is not valid")
    match = _match(services, request.host, checkout)
    if match is None:
        return problem(
            410, "checkout-gone", "Nothing to pay for", "the resource is no longer for sale"
        )
    if request.method == "POST":
        return await _posted(services, request, checkout, match)
    return await _status(services, checkout, match, ticket, request.host)


def _match(services: Services, host: str, checkout: Checkout) -> Match | None:
    try:
        target = canonicalize(checkout.resource)
    except PathError:
        return None
    match = services.policy.current.match(host, target, checkout.method)
    if isinstance(match, NoMatch) or match.service.name != checkout.service:
        return None
    if match.route.route.price.free:  # free since: nothing to pay for (as the pay endpoint)
        return None
    return match


async def _posted(
    services: Services, request: web.BaseRequest, checkout: Checkout, match: Match
) -> web.StreamResponse:
    assert services.cashier is not None
    limit = services.cashier.beef_limits.max_bytes
    data = await read_body(request, limit * 2)
    if len(data) > limit * 2:
        return problem(413, "beef-too-large", "Payment too large", f"at most {limit} bytes")
    beef = _bytes_of(data)
    if beef is None:
        return problem(400, "malformed-beef", "Bad payment", "post the transaction as BEEF")
    if checkout.expired:
        return answer({"status": "expired"}, status=410)
    try:
        accepted = await _take(services, checkout, match, beef)
    except Underpaid as exc:
        return problem(
            exc.status,
            exc.reason,
            "Payment not taken",
            exc.detail,
            paid=exc.paid,
            price=checkout.satoshis,
        )
    return _paid(services, accepted)


async def _status(
    services: Services, checkout: Checkout, match: Match, ticket: str, host: str
) -> web.StreamResponse:
    assert services.cashier is not None
    try:
        done = await checkout_taken(services.cashier, services.revocations, checkout, match)
    except PaymentError as exc:
        if exc.reason == "grant-revoked" and services.store is not None:
            receipt = await services.store.receipt(checkout_key(checkout))
            entry = None if receipt is None else await _listed(services, receipt)
            if entry is not None and entry.settled == why.REFUNDED:
                return _refunded(entry)
        return answer({"status": "refused", "reason": exc.reason, "detail": exc.detail})
    if done is not None:
        return await _delivered(services, checkout, done)
    late = services.watcher if isinstance(services.watcher, CheckoutWatcher) else None
    if checkout.expired and (late is None or not late.within_grace(checkout)):
        return answer({"status": "expired"})
    if services.watcher is None:
        return answer({"status": "pending"})
    if late is not None:
        try:
            await late.keep(checkout, ticket, host)
        except StoreUnavailable as exc:  # the next poll tries again
            log.warning("checkout %s not put on the watch list: %s", checkout.id, exc)
    script = locking_script(PublicKey(services.server_key), checkout)
    try:
        found = await services.watcher.payments_to(script)
    except Exception as exc:  # a chain API outage must not break the page
        log.warning("payment watcher failed: %s", exc)
        found = []
    outcome: dict[str, Any] = {"status": "pending"}
    for beef in found:
        try:
            accepted = await _take(services, checkout, match, beef)
        except PaymentError as exc:
            outcome = _refusal(exc, checkout)
            continue
        return await _delivered(services, checkout, accepted)
    # After expiry the page opens a new checkout: nothing else to say.
    return answer({"status": "expired"} if checkout.expired else outcome)


async def _delivered(services: Services, checkout: Checkout, accepted: Accepted) -> web.Response:
    """The paid answer; a payment recorded after expiry is settled on the refund list.

    Its entry is settled `grant-delivered` before the grant leaves, unless
    the admin settled it first: refunded, the answer is "refunded" and no
    grant; honoured, the grant. Raises StoreUnavailable (no grant leaves
    before the store says it was not refunded).
    """
    receipt = accepted.receipt
    if receipt.time >= checkout.expires and services.store is not None:
        # Listed by the late watch (maybe at this very moment) or not at
        # all: a settlement applies either way (store.settle_refund).
        key = outpoint(receipt.txid, receipt.vout)
        if not await services.store.settle_refund(key, why.DELIVERED, int(time.time())):
            entry = await _listed(services, receipt)
            if entry is not None and entry.settled == why.REFUNDED:
                return _refunded(entry)
    return _paid(services, accepted)


async def _listed(services: Services, receipt: Receipt) -> Refund | None:
    """The refund list's entry of a receipt's output, if listed."""
    assert services.store is not None
    for entry in await services.store.refunds(txid=receipt.txid):
        if entry.vout == receipt.vout:
            return entry
    return None


def _refunded(entry: Refund) -> web.Response:
    """A checkout whose payment the admin refunded: no grant, and the page says so."""
    body = {"status": "refunded", "txid": entry.txid, "satoshis": entry.satoshis}
    return web.Response(
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _take(services: Services, checkout: Checkout, match: Match, beef: bytes) -> Accepted:
    """take_checkout, with a refusal logged as every way in logs one (intake.log_refused)."""
    assert services.cashier is not None
    server = PublicKey(services.server_key)
    try:
        return await take_checkout(
            services.cashier, services.revocations, server, checkout, match, beef
        )
    except PaymentError as refused:
        if refused.reason != "checkout-paid":  # paid by another transaction: pending, not refused
            log_refused(match, checkout.satoshis, refused)
        raise


def _paid(services: Services, accepted: Accepted) -> web.Response:
    headers = token_headers(accepted, secure=services.cookie_secure, now=int(time.time()))
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


# --- the late watch: checkouts past their expiry ----------------------------------------


async def watch_late(
    services: Services, late: CheckoutWatcher, *, every: int = ROUND, batch: int = BATCH
) -> None:
    """A worker's background task, until cancelled: look for late checkout payments.

    Every `every` seconds the worker that first asks the store's counter has
    the round (so the rate is the same for one worker or many instances) and
    looks at up to `batch` due checkouts (`late_round`).
    """
    assert services.store is not None
    while True:
        try:
            window = await services.store.hit(ROUND_KEY, every)
            if window.count == 1:
                await late_round(services, late, batch=batch)
        except StoreUnavailable as exc:
            log.warning("late checkout watch paused: %s", exc)
        except Exception:  # never let one odd entry end the task
            log.exception("late checkout watch failed")
        await asyncio.sleep(every)


async def late_round(
    services: Services, late: CheckoutWatcher, *, batch: int = BATCH, lease: int = LEASE
) -> int:
    """Look at up to `batch` watched checkouts whose look is due; how many were looked at.

    Each comes leased from the store, so no other worker or instance looks at
    it meanwhile. Raises StoreUnavailable.
    """
    due = await late.watchlist.due_checkouts(batch, lease)
    for checkout_id, entry in due:
        await _look_late(services, late, checkout_id, entry)
    return len(due)


async def _look_late(
    services: Services, late: CheckoutWatcher, checkout_id: str, entry: str
) -> None:
    """Look once for payments to one watched checkout, then schedule the next look or stop."""
    assert services.store is not None and services.tokens is not None
    now = time.time()
    watched = Watched.from_text(entry)
    checkout = read_ticket(services.tokens, watched.ticket, allow_expired=True) if watched else None
    if watched is None or checkout is None or checkout.id != checkout_id:
        await late.watchlist.unwatch_checkout(checkout_id)  # unreadable (a key pruned since)
        return
    if not late.within_grace(checkout, now):
        await late.watchlist.unwatch_checkout(checkout_id)
        return
    if now < checkout.expires:  # its page still polls: the first look comes after expiry
        await late.watchlist.look_again(checkout_id, next_look(checkout.expires, now))
        return
    receipt = await services.store.receipt(checkout_key(checkout))
    try:
        found = await late.payments_to(locking_script(PublicKey(services.server_key), checkout))
    except Exception as exc:  # the chain API is down: look again later
        log.warning("late checkout watch: payment watcher failed: %s", exc)
        await late.watchlist.look_again(checkout_id, next_look(checkout.expires, time.time()))
        return
    if receipt is not None:
        # Paid, and recorded (a page's poll took it): one last look, for
        # other payments to it, each listed once; then nothing more to find.
        listed = True
        for beef in found:
            if _txid_of(services, beef) not in (None, receipt.txid):
                detail = "the checkout had been paid by another transaction"
                listed = await _list(services, checkout, beef, why.PAID_TWICE, detail) and listed
        if listed:
            await late.watchlist.unwatch_checkout(checkout_id)
        else:  # one could not be checked now: look again
            await late.watchlist.look_again(checkout_id, next_look(checkout.expires, time.time()))
        return
    done = False
    for beef in found:
        done = await _late_payment(services, checkout, watched.host, beef) or done
    if done:
        await late.watchlist.unwatch_checkout(checkout_id)
    else:
        await late.watchlist.look_again(checkout_id, next_look(checkout.expires, time.time()))


async def _late_payment(services: Services, checkout: Checkout, host: str, beef: bytes) -> bool:
    """Take or list one payment found for an expired checkout; True: stop watching it."""
    match = _match(services, host, checkout)
    if match is None:
        detail = f"the policy no longer sells {checkout.method} {checkout.resource}"
        return await _list(services, checkout, beef, why.NOT_FOR_SALE, detail)
    try:
        accepted = await _take(services, checkout, match, beef)
    except Underpaid as exc:
        # A full payment may still follow: keep watching.
        await _list(services, checkout, beef, why.UNDERPAID, exc.detail)
        return False
    except PaymentError as exc:
        if exc.reason == "checkout-paid":
            detail = "the checkout had been paid by another transaction"
            return await _list(services, checkout, beef, why.PAID_TWICE, detail)
        if exc.reason == "payment-reused":
            detail = (
                "the transaction had bought something else already (another checkout, or a "
                "request): one transaction buys one thing, so this output bought nothing"
            )
            return await _list(services, checkout, beef, why.PAYMENT_REUSED, detail)
        if exc.reason == "already-mined":
            detail = (
                "in a block before Farebox saw it: the cashier takes unconfirmed payments "
                "only, so no receipt or grant was made"
            )
            return await _list(services, checkout, beef, why.MINED, detail)
        # An outage (503: look again later), or a transaction that is no valid payment.
        log.warning("late payment to checkout %s not taken: %s", checkout.id, exc.reason)
        return False
    receipt = accepted.receipt
    if receipt.prefix != checkout.id:
        # The same transaction paid another checkout for the same resource
        # first: its grant is that checkout's, and this output bought nothing.
        detail = (
            "the transaction had paid another checkout for the same resource already: one "
            "transaction buys one thing, so this output bought nothing"
        )
        return await _list(services, checkout, beef, why.PAYMENT_REUSED, detail)
    late_by = max(0, receipt.time - checkout.expires)
    detail = (
        f"paid in full and recorded {late_by} s after the checkout expired, with a "
        "receipt and a grant nobody has collected"
    )
    await _add(
        services,
        _refund(
            services,
            checkout,
            receipt.txid,
            receipt.vout,
            receipt.satoshis,
            why.UNCLAIMED,
            detail,
            grant_id=receipt.grant_id,
        ),
    )
    return True


def _txid_of(services: Services, beef: bytes) -> str | None:
    assert services.cashier is not None
    try:
        return read_beef(beef, services.cashier.beef_limits).subject.txid()
    except PaymentError:
        return None


async def _list(
    services: Services, checkout: Checkout, beef: bytes, reason: str, detail: str
) -> bool:
    """Put a payment the cashier did not take on the refund list, once per output, if
    it is real; True: listed (now or before) or no payment to this checkout at all,
    False: it cannot be checked now (the next look tries again)."""
    assert services.cashier is not None and services.store is not None
    server = PublicKey(services.server_key)
    try:
        subject = read_beef(beef, services.cashier.beef_limits).subject
    except PaymentError:
        return True
    script = locking_script(server, checkout)
    vout = next(
        (n for n, out in enumerate(subject.outputs) if out.locking_script.serialize() == script),
        None,
    )
    if vout is None:
        return True  # pays another address: nothing of this checkout's
    txid = subject.txid()
    if any(entry.vout == vout for entry in await services.store.refunds(txid=txid)):
        return True  # listed at an earlier look: not checked again
    try:
        verified = await checkout_payment(services.cashier, server, checkout, beef)
    except PaymentError as exc:
        log.warning("payment %s to checkout %s is not valid: %s", txid, checkout.id, exc.reason)
        return True
    except Exception as exc:  # the chain cannot be asked now: the next look tries again
        log.warning("payment %s to checkout %s cannot be checked now: %s", txid, checkout.id, exc)
        return False
    await _add(
        services,
        _refund(
            services, checkout, verified.txid, verified.vout, verified.satoshis, reason, detail
        ),
    )
    return True


def _refund(
    services: Services,
    checkout: Checkout,
    txid: str,
    vout: int,
    satoshis: int,
    reason: str,
    detail: str,
    *,
    grant_id: str = "",
) -> Refund:
    return Refund(
        txid=txid,
        vout=vout,
        satoshis=satoshis,
        price=checkout.satoshis,
        checkout=checkout.id,
        service=checkout.service,
        resource=checkout.resource,
        method=checkout.method,
        address=payee(PublicKey(services.server_key), checkout).address(),
        expired=checkout.expires,
        time=int(time.time()),
        reason=reason,
        detail=detail,
        grant_id=grant_id,
        # BRC-29 with the "anyone" sender (payments/checkout.py): what sweeping needs.
        sender=ANYONE_HEX,
        prefix=checkout.id,
        suffix=suffix(checkout),
    )


async def _add(services: Services, refund: Refund) -> None:
    assert services.store is not None
    if await services.store.add_refund(refund):
        log.warning(
            "refund list: %s satoshis in %s to checkout %s (%s %s): %s",
            refund.satoshis,
            refund.txid,
            refund.checkout,
            refund.service,
            refund.resource,
            refund.reason,
        )


def _bytes_of(data: bytes) -> bytes | None:
    text = data.strip()
    if text[:1] in (b"0",) and all(c in b"0123456789abcdefABCDEF" for c in text):
        try:
            return binascii.unhexlify(text)
        except binascii.Error:
            return None
    return data or None

"""The checkout desk: where a checkout's payment arrives and its status is asked.

`POST /.well-known/farebox/checkout/<ticket>`: a wallet that scanned the QR
code posts the transaction (BEEF, as bytes or hex). `GET` on the same URL is
what the page polls: pending, paid (the answer sets the grant's cookie),
expired, or what went wrong. With a payment watcher configured, a status
request also looks on chain for a payment to the checkout's address, for
wallets that broadcast themselves instead of posting.

Both go through the one intake (payments/intake.py): a checkout is paid
once, and a grant it bought is handed out only while admission allows it.
"""

from __future__ import annotations

import binascii
import json
import logging
import time
from typing import Any

from aiohttp import web
from bsv import PublicKey

from gateway.edge.bodies import read_body
from gateway.edge.paths import PathError, canonicalize
from gateway.edge.problems import answer, payments_disabled, problem
from gateway.errors import PaymentError
from gateway.payments.cashier import Accepted
from gateway.payments.checkout import Checkout, locking_script, read_ticket
from gateway.payments.intake import Underpaid, checkout_taken, take_checkout
from gateway.pipeline.credentials import token_headers
from gateway.policy import Match, NoMatch
from gateway.services import Services

log = logging.getLogger("farebox.checkout")


async def handle(services: Services, request: web.BaseRequest, ticket: str) -> web.StreamResponse:
    """Take a posted payment for the checkout, or say where it stands."""
    if services.cashier is None or services.tokens is None:
        return payments_disabled()
    checkout = read_ticket(services.tokens, ticket, allow_expired=True)
    if checkout is None:
        return problem(404, "no-checkout", "No such checkout", "this checkout link is not valid")
    match = _match(services, request, checkout)
    if match is None:
        return problem(
            410, "checkout-gone", "Nothing to pay for", "the resource is no longer for sale"
        )
    if request.method == "POST":
        return await _posted(services, request, checkout, match)
    return await _status(services, checkout, match)


def _match(services: Services, request: web.BaseRequest, checkout: Checkout) -> Match | None:
    try:
        target = canonicalize(checkout.resource)
    except PathError:
        return None
    match = services.policy.current.match(request.host, target, checkout.method)
    if isinstance(match, NoMatch) or match.service.name != checkout.service:
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


async def _status(services: Services, checkout: Checkout, match: Match) -> web.StreamResponse:
    assert services.cashier is not None
    try:
        done = await checkout_taken(services.cashier, services.revocations, checkout, match)
    except PaymentError as exc:
        return answer({"status": "refused", "reason": exc.reason, "detail": exc.detail})
    if done is not None:
        return _paid(services, done)
    if checkout.expired:
        return answer({"status": "expired"})
    if services.watcher is None:
        return answer({"status": "pending"})
    script = locking_script(PublicKey(services.server_key), checkout)
    try:
        found = await services.watcher.payments_to(script)
    except Exception as exc:  # a chain API outage must not break the page
        log.warning("payment watcher failed: %s", exc)
        found = []
    outcome: dict[str, Any] = {"status": "pending"}
    for beef in found:
        try:
            return _paid(services, await _take(services, checkout, match, beef))
        except PaymentError as exc:
            outcome = _refusal(exc, checkout)
    return answer(outcome)


async def _take(services: Services, checkout: Checkout, match: Match, beef: bytes) -> Accepted:
    assert services.cashier is not None
    server = PublicKey(services.server_key)
    return await take_checkout(
        services.cashier, services.revocations, server, checkout, match, beef
    )


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


def _bytes_of(data: bytes) -> bytes | None:
    text = data.strip()
    if text[:1] in (b"0",) and all(c in b"0123456789abcdefABCDEF" for c in text):
        try:
            return binascii.unhexlify(text)
        except binascii.Error:
            return None
    return data or None

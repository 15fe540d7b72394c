"""`POST /.well-known/farebox/pay`: a payment in the body, no header-size limit.

The body is JSON `{url, method, beef (base64), sender, nonce, time, vout,
tab?}`, or the raw BEEF as application/octet-stream with the other fields
in the query (a 90 kB BEEF in a header breaks proxies). The answer is the
token and its receipt; for a metered route the payment opens or (with
`tab`, a tab token) tops up a tab. The payment itself goes through the one
intake (payments/intake.py), as on every other way in.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from gateway.edge.bodies import read_body
from gateway.edge.paths import PathError, canonicalize
from gateway.edge.problems import payments_disabled, problem
from gateway.endpoints.public import shown
from gateway.errors import PaymentError
from gateway.payments.checkout import kept_ticket, read_ticket
from gateway.payments.intake import from_fields, log_refused, purchase, take
from gateway.pipeline.credentials import tab_grant, token_headers
from gateway.policy import Match, NoMatch
from gateway.pricing import quote
from gateway.pricing.tabs import sats
from gateway.services import Services
from gateway.store import StoreUnavailable


async def pay(services: Services, request: web.BaseRequest, _: str) -> web.StreamResponse:
    """Take a payment for the resource named in the body; raises PaymentError and friends."""
    cashier = services.cashier
    if cashier is None:
        return payments_disabled()
    limit = cashier.beef_limits.max_bytes
    fields = await _fields(request, limit)
    url, method = fields.get("url"), fields.get("method", "GET")
    if not isinstance(url, str) or not url:
        raise PaymentError(
            "bad-url", "`url` must be the path to pay for, e.g. /archive/1", status=400
        )
    if not isinstance(method, str) or not method.isascii() or not method.isalpha():
        raise PaymentError("bad-method", "`method` must be an HTTP method name", status=400)
    method = method.upper()
    try:
        target = canonicalize(url)
    except PathError as exc:
        raise PathError(exc.reason, f"`url`: {exc.detail}") from None
    policy = services.policy.current
    match = policy.match(request.host, target, method)
    if isinstance(match, NoMatch) or match.route.route.price.free:
        return problem(
            400,
            "not-for-sale",
            "Nothing to pay for",
            f"{method} {target.path} is not a priced resource",
        )
    tab_id = None
    quoted = await _page_price(services, fields.get("checkout"), match, method)
    if match.route.route.meter is not None:
        tab_id = await _tab_to_top_up(services, fields.get("tab"), match.service.name)
        price = (await quote.top_up(services.rates, match)).satoshis
    else:
        price = (await quote.price(policy, services.rates, request.headers, match)).satoshis
    if quoted is not None:
        price = quoted
    bought = purchase(match, method, price, tab=tab_id)
    try:
        accepted = await take(cashier, services.revocations, from_fields(fields, limit), bought)
    except PaymentError as refused:
        log_refused(match, price, refused)
        raise
    body: dict[str, Any] = {
        "token": accepted.token,
        "expires": accepted.grant.expires,
        "grant": {
            "service": accepted.grant.service,
            "scope": accepted.grant.scope,
            "covers": accepted.grant.covers,
            "methods": list(accepted.grant.methods),
        },
        "receipt": shown(accepted.receipt),
        "repeated": accepted.repeated,
    }
    if accepted.grant.tab:
        try:
            tabs = services.tabs
            assert tabs is not None, "a cashier comes with a store"
            balance = await tabs.balance(accepted.grant.tab)
        except StoreUnavailable:
            balance = accepted.balance
        body["tab"] = {"id": accepted.grant.tab, "balance_satoshis": sats(balance or 0)}
    headers = token_headers(accepted, secure=services.cookie_secure, now=int(time.time()))
    headers["Cache-Control"] = "no-store"
    return web.Response(
        body=json.dumps(body).encode(), content_type="application/json", headers=headers
    )


async def _page_price(services: Services, given: object, match: Match, method: str) -> int | None:
    """The price a paywall page quoted (satoshis), when the payment names its checkout.

    A page prices the request once: with the concession its request proved
    and the rate of that moment. Its button's payment carries no credential
    and may come minutes later: repricing it then could refuse (and lose) a
    payment of what the page asked. The checkout's signed ticket holds that
    price until it expires (payments/checkout.py), for that resource and
    method only. Raises PaymentError (404 unknown, 410 expired, 400 for
    another resource), StoreUnavailable.
    """
    if given is None:
        return None
    if not isinstance(given, str) or not given or services.tokens is None:
        raise PaymentError("bad-checkout", "`checkout` must be a checkout id", status=400)
    ticket = await kept_ticket(services.store, given)
    checkout = read_ticket(services.tokens, ticket, allow_expired=True) if ticket else None
    if checkout is None:
        raise PaymentError(
            "checkout-unknown", "no such payment request: reload the page", status=404
        )
    if checkout.expired:
        raise PaymentError(
            "checkout-expired", "this payment request expired: reload the page", status=410
        )
    if (checkout.service, checkout.resource, checkout.method) != (
        match.service.name,
        match.resource,
        method,
    ):
        raise PaymentError(
            "checkout-mismatch", "the checkout is for another resource or method", status=400
        )
    return checkout.satoshis


async def _tab_to_top_up(services: Services, token: object, service: str) -> str | None:
    """The tab a `tab` field names (a tab token of this service); None opens a new tab."""
    if token is None or token == "":
        return None
    if not isinstance(token, str):
        raise PaymentError("bad-tab", "`tab` must be a tab token (a string)", status=400)
    grant = tab_grant(services.tokens, token)
    revocations = services.revocations
    if grant is not None and revocations is not None and await revocations.of(grant):
        raise PaymentError("grant-revoked", "this tab was revoked; open a new one", status=400)
    if grant is None or grant.service != service:
        raise PaymentError(
            "bad-tab",
            "`tab` must be a valid tab token of the service this payment is for",
            status=400,
        )
    return grant.tab


async def _fields(request: web.BaseRequest, limit: int) -> dict[str, Any]:
    """JSON with base64 BEEF, or the raw BEEF bytes with the rest in the query."""
    budget = limit * 4 // 3 + 16 * 1024
    too_large = PaymentError(
        "beef-too-large", f"payment body is larger than {budget} bytes", status=413
    )
    if request.content_length is not None and request.content_length > budget:
        raise too_large
    data = await read_body(request, budget)
    if len(data) > budget:
        raise too_large
    if request.content_type == "application/octet-stream":
        fields: dict[str, Any] = dict(request.query)
        fields["beef"] = data
        return fields
    try:
        fields = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise PaymentError(
            "malformed-payment",
            "body must be JSON (or BEEF as application/octet-stream)",
            status=400,
        ) from None
    if not isinstance(fields, dict):
        raise PaymentError("malformed-payment", "body must be a JSON object", status=400)
    return fields

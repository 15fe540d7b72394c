"""Farebox's own endpoints under /.well-known/: pay, receipts, JWKS."""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from bsv import PublicKey

from gateway.bsv.derivation import p2pkh_script
from gateway.challenge import paywall
from gateway.edge.paths import PathError, canonicalize
from gateway.edge.problems import answer, payments_disabled, problem
from gateway.endpoints import checkout as desk
from gateway.ledger import transparency
from gateway.ledger.receipts import DERIVATION_FIELDS, Receipt
from gateway.payments.cashier import TopUp, remittance
from gateway.payments.errors import PaymentError
from gateway.pipeline.credentials import presented_tokens, token_headers
from gateway.policy import NoMatch
from gateway.pricing.rates import RateUnavailable, quote
from gateway.pricing.tabs import sats
from gateway.store import StoreUnavailable
from gateway.tokens import Grant

if TYPE_CHECKING:
    from gateway.pipeline.gateway import Gateway

PAY = "/.well-known/farebox/pay"
RECEIPTS = "/.well-known/farebox/receipts/"
TAB = "/.well-known/farebox/tab"
AUTH = "/.well-known/farebox/auth"  # nginx auth_request
P2PKH = "/.well-known/farebox/p2pkh/"
_PUBKEY = re.compile(r"0[23][0-9a-f]{64}")
JWKS = "/.well-known/jwks.json"
_TXID = re.compile(r"[0-9a-f]{64}")


HEALTH = "/healthz"
READY = "/readyz"


def is_own(path: str) -> bool:
    return path.startswith("/.well-known/farebox/") or path in (JWKS, HEALTH, READY)


async def handle(gw: Gateway, request: web.BaseRequest, path: str) -> web.StreamResponse:
    if path == JWKS and request.method in ("GET", "HEAD"):
        if gw.tokens is None:
            return problem(404, "no-route", "Not found", "this gateway issues no tokens")
        body = json.dumps(gw.tokens.ring.jwks()).encode()
        return web.Response(
            body=body, content_type="application/json", headers={"Cache-Control": "max-age=300"}
        )
    if path == HEALTH:
        return answer({"status": "ok"})
    if path == READY:
        return await ready(gw)
    if path.startswith(paywall.ASSETS + "/") and request.method in ("GET", "HEAD"):
        return paywall.asset(path[len(paywall.ASSETS) + 1 :])
    if path.startswith(P2PKH) and request.method in ("GET", "HEAD"):
        return p2pkh(path[len(P2PKH) :])
    if path.startswith(desk.PREFIX):
        return await desk.handle(gw, request, path[len(desk.PREFIX) :])
    if path == PAY:
        if request.method != "POST":
            return problem(
                405,
                "method-not-allowed",
                "Method not allowed",
                "POST a payment here",
                headers={"Allow": "POST"},
            )
        return await pay(gw, request)
    if path == transparency.PATH and request.method in ("GET", "HEAD"):
        return await transparency_report(gw, request)
    if path == AUTH:
        return await gw.authorize(request)
    if path == TAB and request.method in ("GET", "HEAD"):
        return await tab_balance(gw, request)
    if path.startswith(RECEIPTS) and request.method in ("GET", "HEAD"):
        return await receipt(gw, request, path[len(RECEIPTS) :])
    return problem(404, "no-route", "Not found", f"no Farebox endpoint at {path}")


async def pay(gw: Gateway, request: web.BaseRequest) -> web.StreamResponse:
    """Take a payment in the body: no header-size limit for large BEEF."""
    if gw.cashier is None:
        return payments_disabled()
    limit = gw.cashier.beef_limits.max_bytes
    try:
        fields = await _pay_fields(request, limit)
        target = canonicalize(str(fields.get("url") or ""))
        method = str(fields.get("method") or "GET").upper()
    except PaymentError as exc:
        return problem(exc.status, exc.reason, "Bad payment", exc.detail)
    except PathError as exc:
        return problem(400, exc.reason, "Bad resource path", exc.detail)
    match = gw.policy.current.match(request.host, target, method)
    if isinstance(match, NoMatch) or match.route.route.price.free:
        return problem(
            400,
            "not-for-sale",
            "Nothing to pay for",
            f"{method} {target.path} is not a priced resource",
        )
    top_up = None
    tabs = match.service.service.tabs
    if match.route.route.meter is not None and tabs is not None:
        top_up = TopUp(None, tabs.lasts)
        if fields.get("tab"):
            grant = _tab_grant(gw, str(fields["tab"]))
            try:
                revoked = grant is not None and await gw.revoked(grant)
            except StoreUnavailable:
                return problem(503, "store-unavailable", "Temporarily unavailable", "try again")
            if revoked:
                return problem(
                    400, "grant-revoked", "Tab revoked", "this tab was revoked; open a new one"
                )
            if grant is None or grant.service != match.service.name:
                return problem(
                    400,
                    "bad-tab",
                    "Not a tab of this service",
                    "`tab` must be a valid tab token of the service this payment is for",
                )
            top_up = TopUp(grant.tab, tabs.lasts)
    try:
        payment = remittance(
            beef=fields.get("beef"),
            sender=fields.get("sender"),
            nonce=fields.get("nonce"),
            time_ms=None if fields.get("time") is None else str(fields.get("time")),
            vout=fields.get("vout"),
            max_bytes=limit,
        )
        if top_up is not None and tabs is not None:
            price = (await quote(tabs.top_up, gw.rates)).satoshis
        else:
            price = (await gw.quote(request, match)).satoshis
        accepted = await gw.cashier.accept(payment, match, method, price, top_up)
    except RateUnavailable as exc:
        return problem(503, "price-unavailable", "Price unavailable", str(exc))
    except PaymentError as exc:
        title = "Payment refused" if exc.status == 402 else "Payment not processed"
        return problem(exc.status, exc.reason, title, exc.detail)
    body = {
        "token": accepted.token,
        "expires": accepted.grant.expires,
        "grant": {
            "service": accepted.grant.service,
            "scope": accepted.grant.scope,
            "covers": accepted.grant.covers,
            "methods": list(accepted.grant.methods),
        },
        "receipt": _shown(accepted.receipt),
        "repeated": accepted.repeated,
    }
    if accepted.grant.tab:
        try:
            balance = await gw.cashier.store.balance(accepted.grant.tab)
        except StoreUnavailable:
            balance = accepted.balance
        body["tab"] = {"id": accepted.grant.tab, "balance_satoshis": sats(balance or 0)}
    headers = token_headers(accepted, secure=gw.cookie_secure, now=int(time.time()))
    headers["Cache-Control"] = "no-store"
    return web.Response(
        body=json.dumps(body).encode(), content_type="application/json", headers=headers
    )


async def _pay_fields(request: web.BaseRequest, limit: int) -> dict[str, Any]:
    # JSON with base64 BEEF, or the raw BEEF bytes with the rest in the query.
    budget = limit * 4 // 3 + 16 * 1024
    if request.content_length is not None and request.content_length > budget:
        raise PaymentError(
            "beef-too-large", f"payment body is larger than {budget} bytes", status=413
        )
    data = await request.content.read(budget + 1)
    if len(data) > budget:
        raise PaymentError(
            "beef-too-large", f"payment body is larger than {budget} bytes", status=413
        )
    if request.content_type == "application/octet-stream":
        fields: dict[str, Any] = dict(request.query)
        fields["beef"] = data
        return fields
    try:
        fields = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PaymentError(
            "malformed-payment",
            "body must be JSON (or BEEF as application/octet-stream)",
            status=400,
        ) from None
    if not isinstance(fields, dict):
        raise PaymentError("malformed-payment", "body must be a JSON object", status=400)
    return fields


async def receipt(gw: Gateway, request: web.BaseRequest, txid: str) -> web.StreamResponse:
    """The payer's receipt; proof of being the payer is the grant's token."""
    if not _TXID.fullmatch(txid):
        return problem(400, "bad-txid", "Bad txid", "a txid is 64 lower-case hex digits")
    if gw.cashier is None or gw.tokens is None:
        return problem(404, "no-receipt", "No such receipt", "this gateway takes no payments")
    found = await gw.cashier.store.receipt(txid)
    holder = _grant_for(gw, request, txid)
    if found is None or holder is None:
        # Same answer either way: a txid seen on chain reveals no purchase.
        return problem(
            404,
            "no-receipt",
            "No such receipt",
            "present the token of this payment to see its receipt",
        )
    return web.Response(body=json.dumps(_shown(found)).encode(), content_type="application/json")


async def transparency_report(gw: Gateway, request: web.BaseRequest) -> web.StreamResponse:
    try:
        days = int(request.query.get("days", transparency.DEFAULT_DAYS))
    except ValueError:
        days = 0
    if not 1 <= days <= transparency.MAX_DAYS:
        return problem(400, "bad-days", "Bad request", f"days is 1 to {transparency.MAX_DAYS}")
    if gw.store is None:
        return problem(404, "no-report", "No report", "this gateway keeps no receipts")
    try:
        figures = await transparency.report(gw, days)
    except StoreUnavailable:
        return problem(503, "store-unavailable", "Temporarily unavailable", "try again shortly")
    headers = {"Cache-Control": "public, max-age=60", "Access-Control-Allow-Origin": "*"}
    if request.query.get("format") != "json" and paywall.wants_html(request.headers.get("Accept")):
        return web.Response(
            text=paywall.render_report(figures), content_type="text/html", headers=headers
        )
    return web.Response(
        body=json.dumps(figures).encode(), content_type="application/json", headers=headers
    )


def p2pkh(key: str) -> web.Response:
    """The P2PKH locking script of a public key: what a browser page needs to
    pay a key a wallet derived (WebCrypto has no RIPEMD-160)."""
    if not _PUBKEY.fullmatch(key):
        return problem(400, "bad-key", "Bad public key", "a compressed public key in hex")
    try:
        script = p2pkh_script(PublicKey(key))
    except Exception:  # bsv-sdk raises assorted types for points off the curve
        return problem(400, "bad-key", "Bad public key", "not a point on the curve")
    return answer({"script": script.hex()})


def _shown(receipt: Receipt) -> dict[str, Any]:
    """A receipt as its payer sees it: without the derivation data kept for sweeping."""
    return {k: v for k, v in receipt.to_json().items() if k not in DERIVATION_FIELDS}


def _tab_grant(gw: Gateway, token: str) -> Grant | None:
    verified = gw.tokens.verify(token) if gw.tokens is not None else None
    if verified is None or verified[0].covers != "tab" or not verified[0].tab:
        return None
    return verified[0]


async def tab_balance(gw: Gateway, request: web.BaseRequest) -> web.StreamResponse:
    """What is left on the tab whose token is presented (Bearer or cookie)."""
    for token in presented_tokens(request):
        grant = _tab_grant(gw, token)
        if grant is None or gw.store is None:
            continue
        try:
            if await gw.revoked(grant):
                break
            balance = await gw.store.balance(grant.tab)
        except StoreUnavailable:
            return problem(
                503, "store-unavailable", "Temporarily unavailable", "the store is unreachable"
            )
        left = balance or 0
        return answer(
            {
                "tab": grant.tab,
                "service": grant.service,
                "scope": grant.scope,
                "balance_satoshis": sats(left),
                "balance_msat": left,
                "expires": grant.expires,
            }
        )
    return problem(
        401,
        "no-tab",
        "No tab presented",
        "present a tab token (Authorization: Bearer) to see its balance",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _grant_for(gw: Gateway, request: web.BaseRequest, txid: str) -> object | None:
    assert gw.tokens is not None
    for token in presented_tokens(request):
        verified = gw.tokens.verify(token)
        if verified is not None and verified[0].txid == txid:
            return verified[0]
    return None


async def ready(gw: Gateway) -> web.Response:
    """Ready when the store answers: without it priced routes only say 503."""
    body: dict[str, Any] = {"status": "ready", "policy": gw.policy.current.version, "store": "ok"}
    if gw.store is not None:
        try:
            await gw.store.ping()
        except StoreUnavailable as exc:
            body.update(status="not-ready", store=f"unavailable: {exc}")
            return answer(body, status=503)
    return answer(body)

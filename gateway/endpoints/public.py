"""Farebox's small public answers: health, readiness, JWKS, receipts, the
transparency report, and the paywall's own files and P2PKH helper."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web
from bsv import PublicKey

from gateway.bsv.derivation import p2pkh_script
from gateway.challenge import paywall
from gateway.edge import cors
from gateway.edge.problems import answer, problem
from gateway.ledger import transparency
from gateway.pipeline.credentials import presented_tokens
from gateway.services import Services
from gateway.store import StoreUnavailable
from gateway.store.receipts import DERIVATION_FIELDS, Receipt

_PUBKEY = re.compile(r"0[23][0-9a-f]{64}")
_TXID = re.compile(r"[0-9a-f]{64}")


async def health(services: Services, request: web.BaseRequest, _: str) -> web.Response:
    """Liveness: the process answers."""
    return answer({"status": "ok"})


async def ready(services: Services, request: web.BaseRequest, _: str) -> web.Response:
    """Ready when the store answers: without it priced routes only say 503.

    The public answer says ready or not and nothing else (the store's address
    and error text are for the admin listener's GET /ready).
    """
    state = await readiness(services)
    body = {"status": state["status"]}
    return answer(body, status=200 if state["status"] == "ready" else 503)


async def readiness(services: Services) -> dict[str, Any]:
    """Readiness with its details: policy version, and the store's state or error."""
    body: dict[str, Any] = {
        "status": "ready",
        "policy": services.policy.current.version,
        "store": "ok",
    }
    if services.store is not None:
        try:
            await services.store.ping()
        except StoreUnavailable as exc:
            body.update(status="not-ready", store=f"unavailable: {exc}")
    return body


async def jwks(services: Services, request: web.BaseRequest, _: str) -> web.Response:
    """The token signing keys (RFC 7517), for upstreams that verify grants."""
    if services.tokens is None:
        return problem(404, "no-route", "Not found", "this gateway issues no tokens")
    body = json.dumps(services.tokens.ring.jwks()).encode()
    return web.Response(
        body=body, content_type="application/json", headers={"Cache-Control": "max-age=300"}
    )


async def asset(services: Services, request: web.BaseRequest, name: str) -> web.Response:
    """One of the paywall page's own files."""
    return paywall.asset(name)


async def p2pkh(services: Services, request: web.BaseRequest, key: str) -> web.Response:
    """The P2PKH locking script of a public key: what a browser page needs to
    pay a key a wallet derived (WebCrypto has no RIPEMD-160)."""
    if not _PUBKEY.fullmatch(key):
        return problem(400, "bad-key", "Bad public key", "a compressed public key in hex")
    try:
        script = p2pkh_script(PublicKey(key))
    except Exception:  # bsv-sdk raises assorted types for points off the curve
        return problem(400, "bad-key", "Bad public key", "not a point on the curve")
    return answer({"script": script.hex()})


async def receipt(services: Services, request: web.BaseRequest, txid: str) -> web.Response:
    """The payer's receipt; proof of being the payer is the grant's token."""
    if not _TXID.fullmatch(txid):
        return problem(400, "bad-txid", "Bad txid", "a txid is 64 lower-case hex digits")
    if services.cashier is None or services.tokens is None:
        return problem(404, "no-receipt", "No such receipt", "this gateway takes no payments")
    found = await services.cashier.store.receipt(txid)
    tokens = services.tokens
    holder = any(
        (verified := tokens.verify(token)) is not None and verified[0].txid == txid
        for token in presented_tokens(request)
    )
    if found is None or not holder:
        # Same answer either way: a txid seen on chain reveals no purchase.
        return problem(
            404,
            "no-receipt",
            "No such receipt",
            "present the token of this payment to see its receipt",
        )
    return web.Response(body=json.dumps(shown(found)).encode(), content_type="application/json")


async def transparency_report(services: Services, request: web.BaseRequest, _: str) -> web.Response:
    """Revenue per service and day, as JSON or (for browsers) a page."""
    try:
        days = int(request.query.get("days", transparency.DEFAULT_DAYS))
    except ValueError:
        days = 0
    if not 1 <= days <= transparency.MAX_DAYS:
        return problem(400, "bad-days", "Bad request", f"days is 1 to {transparency.MAX_DAYS}")
    if services.store is None:
        return problem(404, "no-report", "No report", "this gateway keeps no receipts")
    figures = await transparency.report(
        services.policy.current, services.store, days, services.payouts
    )
    headers = {
        "Cache-Control": "public, max-age=60",
        "Access-Control-Allow-Origin": "*",
        "Vary": "Accept, Accept-Language",  # a page in the reader's language, or JSON
    }
    if request.query.get("format") != "json" and paywall.wants_html(request.headers.get("Accept")):
        names = {s.name: s.service.description or s.name for s in services.policy.current.services}
        return web.Response(
            text=paywall.render_report(figures, names, request.headers.get("Accept-Language")),
            content_type="text/html",
            headers=headers,
        )
    return web.Response(
        body=json.dumps(figures).encode(), content_type="application/json", headers=headers
    )


def shown(receipt: Receipt) -> dict[str, Any]:
    """A receipt as its payer sees it: without the derivation data kept for sweeping."""
    return {k: v for k, v in receipt.to_json().items() if k not in DERIVATION_FIELDS}


async def handshake(services: Services, request: web.BaseRequest, _: str) -> web.Response:
    """POST /.well-known/auth: the BRC-103 handshake of an authenticated client (AuthFetch).

    Open to pages on any origin (it carries no credential): OPTIONS is the
    browser's preflight for its JSON body.
    """
    if services.peers is None:
        return problem(
            404,
            "authentication-off",
            "Not found",
            "this gateway serves no authenticated (BRC-103) clients: with several workers "
            "it needs a shared store to refuse replayed requests",
        )
    if request.method == "OPTIONS":
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "content-type",
                "Access-Control-Max-Age": cors.MAX_AGE,
            },
        )
    answer = await services.peers.handshake(request)
    answer.headers["Access-Control-Allow-Origin"] = "*"
    answer.headers["Access-Control-Expose-Headers"] = cors.AUTH_HEADERS
    return answer

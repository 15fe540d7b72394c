"""The request pipeline and the processes that run it.

One request: canonical path → policy match → free: proxy; priced and unpaid:
402 challenge. `serve` runs one worker in this process, or N worker processes
sharing the port through SO_REUSEPORT, each with its own event loop, upstream
pool and policy watcher.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from bsv import PublicKey
from multidict import CIMultiDict
from yarl import URL

from gateway.challenge.answer import payment_required
from gateway.challenge.paywall import Page, buys_text, render, wants_html
from gateway.edge import cors, logs, metrics
from gateway.edge.forwarded import client_address, is_trusted
from gateway.edge.paths import PathError, Target, canonicalize
from gateway.edge.problems import payments_disabled, problem
from gateway.endpoints import checkout as desk
from gateway.endpoints import wellknown
from gateway.endpoints.checkout import PaymentWatcher
from gateway.ledger.tally import Tally
from gateway.payments.cashier import Accepted, Cashier, TopUp
from gateway.payments.checkout import LIFETIME, open_checkout, payee, payment_uri
from gateway.payments.errors import PaymentError
from gateway.pipeline.credentials import (
    GRANT_HEADER,
    Revocations,
    by_payment,
    by_tab,
    by_token,
    has_payment,
    token_headers,
)
from gateway.policy import Match, NoMatch
from gateway.policy.reload import PolicyHolder
from gateway.pricing.concessions import HEADER as ELIGIBILITY
from gateway.pricing.concessions import (
    Eligibility,
    discounted,
    eligible,
    free_quota_holder,
    reduced,
)
from gateway.pricing.quota import client_of, ratelimit_headers
from gateway.pricing.rates import (
    Quote,
    Rates,
    RateUnavailable,
    msat_quote,
    quote,
)
from gateway.pricing.tabs import HOLD_TTL, TAB, Metering, most_msat, sats, tab_scope
from gateway.proxy.forward import Proxy
from gateway.store import Store, StoreUnavailable, Window
from gateway.tokens import Grant, Tokens

log = logging.getLogger("farebox")

MAX_HEADER_BYTES = 64 * 1024
# Per request: decide only, never proxy (an nginx auth_request subrequest).
# A context variable, not a request key: asked on every request, and a miss on
# a request key costs a raised KeyError.
AUTH_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("auth_only", default=False)
# Per request: the CORS headers for an allowed cross-origin payment (a context
# variable too: read on every priced request).
CORS: contextvars.ContextVar[CIMultiDict[str] | None] = contextvars.ContextVar("cors", default=None)
STORE_RECHECK = 30.0  # seconds after a store failure during which unpaid requests ping it
_UNMATCHED_TITLES = {403: "Forbidden", 404: "Not found", 410: "Gone"}


@dataclass
class Gateway:
    policy: PolicyHolder
    proxy: Proxy
    server_key: str  # compressed public key, hex: safe to show anyone
    tokens: Tokens | None = None
    cashier: Cashier | None = None
    cookie_secure: bool = True
    store: Store | None = None
    revocations: Revocations | None = None
    rates: Rates | None = None
    watcher: PaymentWatcher | None = None
    wallet_url: str = "http://localhost:3321"
    tally: Tally | None = None
    _store_failed: float = field(default=-1e9, init=False)

    async def _store_usable(self) -> None:
        """Raise StoreUnavailable if the store failed lately and still does.

        Only after a recent failure does this cost a ping, so an unpaid
        request normally touches no store at all.
        """
        if self.store is not None and time.monotonic() - self._store_failed < STORE_RECHECK:
            await self.store.ping()
            self._store_failed = -1e9

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        rid = logs.request_id(request)
        response = await self._handle(request)
        if not response.prepared:
            response.headers[logs.HEADER] = rid
        return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            target = canonicalize(request.raw_path)
        except PathError as exc:
            metrics.REQUESTS.labels("", "", 400).inc()
            return problem(400, exc.reason, "Bad request target", exc.detail)
        if wellknown.is_own(target.path):
            return await wellknown.handle(self, request, target.path)
        policy = self.policy.current
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            preflight = self._preflight(request, target)
            if preflight is not None:
                return preflight
        match = policy.match(request.host, target, request.method)
        if isinstance(match, NoMatch):
            metrics.REQUESTS.labels("", "", 405 if match.allowed else policy.unmatched).inc()
            if match.allowed:
                return problem(
                    405,
                    "method-not-allowed",
                    "Method not allowed",
                    f"{request.method} is not offered on {target.path}",
                    headers={"Allow": ", ".join(match.allowed)},
                )
            status = policy.unmatched
            return problem(
                status, "no-route", _UNMATCHED_TITLES[status], f"no service offers {target.path}"
            )
        response = await self._matched(request, match)
        service, route = match.service.name, match.route.scope
        metrics.answered(service, route, response.status, time.perf_counter() - started)
        if self.tally is not None:
            status = response.status
            self.tally.add(
                service,
                route,
                requests=1,
                challenges=int(status == 402),
                upstream_errors=int(status in (502, 504)),
            )
        return response

    async def _matched(self, request: web.BaseRequest, match: Match) -> web.StreamResponse:
        route = match.route.route
        if not route.price.free:
            return await self._priced(request, match)
        if route.free_quota is None:
            return await self._pass(request, match)
        try:
            window = await self._count(request, match)
        except StoreUnavailable:
            return await self._pass(request, match)  # free routes keep working
        return await self._within_quota(request, match, window, over=self._over_limit)

    async def _pass(
        self,
        request: web.BaseRequest,
        match: Match,
        extra: dict[str, str] | None = None,
        reply: CIMultiDict[str] | None = None,
    ) -> web.StreamResponse:
        """Let the request through: proxy it, or (nginx auth_request) say so."""
        if AUTH_ONLY.get():
            headers: CIMultiDict[str] = CIMultiDict(reply or {})
            headers.update(extra or {})
            return web.Response(status=204, headers=headers)
        return await self.proxy.forward(request, match, extra, reply)

    async def authorize(self, request: web.BaseRequest) -> web.StreamResponse:
        """nginx auth_request: may the original request go to the upstream?

        204 (with X-Farebox-Grant for the upstream, and a token just bought
        for the client) or 401: nginx then sends the request to Farebox
        itself (error_page 401), which answers the 402 challenge, a problem,
        or proxies it (metered routes). nginx accepts only 2xx, 401 and 403
        from an auth subrequest, hence 401 for everything else.
        """
        if self.proxy.trusted and not is_trusted(request.remote, self.proxy.trusted):
            return problem(403, "not-a-trusted-proxy", "Forbidden", "ask through the proxy")
        uri = request.headers.get("X-Original-URI")
        if not uri:
            return problem(400, "missing-original-uri", "Bad auth request", "X-Original-URI")
        method = request.headers.get("X-Original-Method", "GET").upper()
        try:
            original = request.clone(method=method, rel_url=URL(uri, encoded=True))
        except ValueError:
            return web.Response(status=401)
        if wellknown.is_own(original.path):
            return web.Response(status=403)  # Farebox's own paths are never authorised this way
        reset = AUTH_ONLY.set(True)
        try:
            answer = await self.handle(original)
        finally:
            AUTH_ONLY.reset(reset)
        if 200 <= answer.status < 300:
            return answer
        refusal = web.Response(status=401, headers={"Cache-Control": "no-store"})
        for name in ("x-bsv-sats", "x-bsv-server"):
            if name in answer.headers:
                refusal.headers[name] = answer.headers[name]
        return refusal

    async def revoked(self, grant: Grant) -> bool:
        """Whether a grant (or its tab) was revoked; StoreUnavailable propagates."""
        return self.revocations is not None and await self.revocations.of(grant)

    def origin(self, request: web.BaseRequest) -> str:
        """scheme://host the client used: a trusted proxy's word for it (TLS in front)."""
        scheme, host = request.scheme, request.host
        if is_trusted(request.remote, self.proxy.trusted):
            scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
            host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
        return f"{scheme}://{host}"

    def client_ip(self, request: web.BaseRequest) -> str | None:
        """The client's address, believing X-Forwarded-For from trusted proxies only."""
        return client_address(
            request.remote, request.headers.get("X-Forwarded-For"), self.proxy.trusted
        )

    async def _count(self, request: web.BaseRequest, match: Match) -> Window:
        quota = match.route.route.free_quota
        assert quota is not None and self.store is not None
        client = client_of(quota, request.headers, self.client_ip(request))
        key = f"quota:{match.service.name}:{match.route.scope}:{client}"
        return await self.store.hit(key, quota.per)

    async def _within_quota(
        self,
        request: web.BaseRequest,
        match: Match,
        window: Window,
        over: Callable[[web.BaseRequest, Match], Awaitable[web.Response]],
    ) -> web.StreamResponse:
        quota = match.route.route.free_quota
        assert quota is not None
        headers = ratelimit_headers(quota.requests, quota.per, window)
        if window.count <= quota.requests:
            return await self._pass(request, match, None, headers)
        response = await over(request, match)
        response.headers.extend(headers)
        response.headers["Retry-After"] = str(window.resets_in)
        return response

    async def _over_limit(self, request: web.BaseRequest, match: Match) -> web.Response:
        return problem(
            429,
            "quota-exhausted",
            "Too many requests",
            f"the free quota of {match.route.scope} is used up for now",
        )

    async def quote(self, request: web.BaseRequest, match: Match) -> Quote:
        """This request's price: the policy's, converted, less any proven concession."""
        quoted = await quote(match.route.route.price, self.rates)
        proven = self._proven(request, match)
        return quoted if proven is None else discounted(quoted, proven)

    async def unit_price(self, request: web.BaseRequest, match: Match) -> tuple[int, int, Any]:
        """A metered route's unit price in msat: (to pay, before concession, concession)."""
        full = await msat_quote(match.route.route.price, self.rates)
        proven = self._proven(request, match)
        if proven is None:
            return full, full, None
        return reduced(full, proven), full, proven

    def _proven(self, request: web.BaseRequest, match: Match) -> Eligibility | None:
        if not match.route.route.concessions:
            return None
        return eligible(request.headers.get(ELIGIBILITY), self._offered(match))

    async def _challenge(
        self,
        request: web.BaseRequest,
        match: Match,
        refused: PaymentError | None = None,
        quoted: Quote | None = None,
    ) -> web.Response:
        quoted = quoted or await self.quote(request, match)
        offered = self._offered(match)
        answer = payment_required(match, request.method, self.server_key, quoted, refused, offered)
        if wants_html(request.headers.get("Accept")):
            return self._paywall(request, match, quoted, refused, answer)
        return answer

    def _paywall(
        self,
        request: web.BaseRequest,
        match: Match,
        quoted: Quote,
        refused: PaymentError | None,
        answer: web.Response,
    ) -> web.Response:
        """The 402 as a page for a person, with the same BRC-121 headers."""
        route, service = match.route.route, match.service
        language = request.headers.get("Accept-Language")
        if route.meter is not None:
            assert service.service.tabs is not None
            covers, scope, lasts = "tab", tab_scope(match), service.service.tabs.lasts
        else:
            grant = route.effective_grant
            covers, scope, lasts = grant.covers, match.scope, grant.lasts
        title = service.service.description or service.name
        page = Page(
            service_title=title,
            description=route.description,
            method=request.method,
            resource=match.resource,
            satoshis=quoted.satoshis,
            buys=buys_text(covers, scope, lasts, title, language),
            server=self.server_key,
            pay_url=wellknown.PAY,
            wallet_url=self.wallet_url,
            fiat=_fiat(quoted),
            concession=_concession(quoted),
            offered=", ".join(c.name for c in self._offered(match)),
            refused=refused.detail if refused is not None else "",
        )
        if self.cashier is not None and self.tokens is not None:
            checkout, ticket = open_checkout(
                self.tokens, service.name, match.resource, request.method, quoted.satoshis
            )
            origin = self.origin(request)
            status_url = desk.PREFIX + ticket
            address = payee(PublicKey(self.server_key), checkout).address()
            page = replace(
                page,
                checkout_uri=payment_uri(address, quoted.satoshis, origin + status_url, title),
                status_url=status_url,
                expires=checkout.expires,
                minutes=LIFETIME // 60,
            )
        headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-type"}
        return web.Response(
            status=402,
            text=render(page, language),
            content_type="text/html",
            headers={**headers, "Vary": "Accept, Accept-Language"},
        )

    async def _tab_challenge(
        self,
        request: web.BaseRequest,
        match: Match,
        refused: PaymentError | None = None,
        balance: int | None = None,
    ) -> web.Response:
        """402 for a metered route: open or top up a tab."""
        meter, tabs = match.route.route.meter, match.service.service.tabs
        assert meter is not None and tabs is not None
        top_up = await quote(tabs.top_up, self.rates)
        unit, full, proven = await self.unit_price(request, match)
        unit_price: dict[str, Any] = {"satoshis": sats(unit)}
        if proven is not None:
            unit_price["full_satoshis"] = sats(full)
            unit_price["concession"] = {"name": proven.name, "discount_percent": proven.discount}
        tab: dict[str, Any] = {
            "per": meter.per,
            "unit_price": unit_price,
            "most_units": str(meter.most),
            "most_satoshis": sats(most_msat(meter, unit)),
            "top_up_satoshis": top_up.satoshis,
            "balance_url": wellknown.TAB,
        }
        if meter.per == "unit":
            tab["units_header"] = meter.units_header
        if balance is not None:
            tab["balance_satoshis"] = sats(balance)
        answer = payment_required(
            match, request.method, self.server_key, top_up, refused, self._offered(match), tab
        )
        if wants_html(request.headers.get("Accept")):
            return self._paywall(request, match, top_up, refused, answer)
        return answer

    def _offered(self, match: Match) -> tuple[Any, ...]:
        known = self.policy.current.concessions
        return tuple(known[n] for n in match.route.route.concessions if n in known)

    def _preflight(self, request: web.BaseRequest, target: Target) -> web.Response | None:
        """A browser asking whether a page elsewhere may pay here; None: not ours
        to answer (a free route's upstream answers its own preflights)."""
        wanted = request.headers["Access-Control-Request-Method"].upper()
        match = self.policy.current.match(request.host, target, wanted)
        if isinstance(match, NoMatch) or match.route.route.price.free:
            return None
        allow = cors.allowed(match, request.headers.get("Origin"))
        if allow is None:
            return problem(
                403,
                "origin-not-allowed",
                "Cross-origin payment not allowed",
                f"service {match.service.name!r} takes payments from its own pages only",
            )
        return web.Response(status=204, headers=cors.preflight_headers(allow, match))

    async def _priced(self, request: web.BaseRequest, match: Match) -> web.StreamResponse:
        allow = cors.allowed(match, request.headers.get("Origin"))
        if allow is None:
            return await self._priced_inner(request, match)
        headers = cors.answer_headers(allow)
        reset = CORS.set(headers)
        try:
            response = await self._priced_inner(request, match)
        finally:
            CORS.reset(reset)
        if not response.prepared:
            response.headers.update(headers)
        return response

    def _reply(self, paid: Accepted | None) -> CIMultiDict[str]:
        """Headers for a priced answer: a token just bought, CORS for allowed origins."""
        reply: CIMultiDict[str] = CIMultiDict()
        if paid is not None:
            reply.extend(token_headers(paid, secure=self.cookie_secure, now=int(time.time())))
        allowed = CORS.get()
        if allowed is not None:
            reply.update(allowed)
        return reply

    async def _priced_inner(self, request: web.BaseRequest, match: Match) -> web.StreamResponse:
        try:
            if match.route.route.meter is not None:
                if AUTH_ONLY.get():
                    # Metering needs the answer: nginx sends these to Farebox to proxy.
                    return problem(401, "metered-via-farebox", "Proxied by Farebox")
                return await self._metered(request, match)
            return await self._admit(request, match)
        except RateUnavailable as exc:
            return problem(
                503,
                "price-unavailable",
                "Price unavailable",
                str(exc),
                headers={"Retry-After": "30"},
            )
        except StoreUnavailable:
            # Money rule 4: without the store nothing priced is served.
            metrics.STORE_ERRORS.inc()
            self._store_failed = time.monotonic()
            return problem(
                503,
                "store-unavailable",
                "Temporarily unavailable",
                "priced resources are paused while the gateway's store is unreachable",
                headers={"Retry-After": "5"},
            )

    async def _admit(self, request: web.BaseRequest, match: Match) -> web.StreamResponse:
        admitted = by_token(self.tokens, request, match) if self.tokens is not None else None
        if admitted is not None and await self.revoked(admitted.grant):
            refusal = PaymentError("grant-revoked", "this grant was revoked; pay again for access")
            return await self._challenge(request, match, refusal)
        quoted = None
        if admitted is None:
            quoted = await self.quote(request, match)
            if quoted.satoshis == 0:  # a full concession: served free
                return await self._pass(request, match)
        if admitted is None and has_payment(request):
            if self.cashier is None:
                return payments_disabled()
            assert quoted is not None
            try:
                admitted = await by_payment(self.cashier, request, match, quoted.satoshis)
            except PaymentError as exc:
                if exc.status == 402:
                    return await self._challenge(request, match, exc, quoted)
                return problem(exc.status, exc.reason, "Payment not processed", exc.detail)
        if admitted is None:
            return await self._unpaid(request, match, self._challenge)
        reply = self._reply(admitted.paid)
        return await self._pass(request, match, {GRANT_HEADER: admitted.upstream_header}, reply)

    async def _unpaid(
        self,
        request: web.BaseRequest,
        match: Match,
        challenge: Callable[[web.BaseRequest, Match], Awaitable[web.Response]],
    ) -> web.StreamResponse:
        """No grant, no payment: a free quota if one is left, else the challenge.

        A concession holder's own quota (counted per holder) goes first, then
        the route's (counted per client network).
        """
        assert self.store is not None
        holder = free_quota_holder(request.headers.get(ELIGIBILITY), self._offered(match))
        if holder is not None:
            concession, who = holder
            quota = concession.free_quota
            assert quota is not None
            digest = hashlib.sha256(who.encode()).hexdigest()[:32]
            key = (
                f"quota:{match.service.name}:{match.route.scope}:holder:{concession.name}:{digest}"
            )
            window = await self.store.hit(key, quota.per)
            if window.count <= quota.requests:
                headers = ratelimit_headers(quota.requests, quota.per, window)
                return await self._pass(request, match, None, headers)
        if match.route.route.free_quota is not None:
            window = await self._count(request, match)
            return await self._within_quota(request, match, window, over=challenge)
        await self._store_usable()  # no challenge that invites paying into an outage
        return await challenge(request, match)

    async def _metered(self, request: web.BaseRequest, match: Match) -> web.StreamResponse:
        """A route charged from a tab: hold the most, proxy, settle what it cost."""
        meter, tabs = match.route.route.meter, match.service.service.tabs
        assert meter is not None and tabs is not None and self.store is not None
        admitted = by_tab(self.tokens, request, match) if self.tokens is not None else None
        if admitted is not None and await self.revoked(admitted.grant):
            refusal = PaymentError("grant-revoked", "this tab was revoked; open a new one")
            return await self._tab_challenge(request, match, refusal)
        if has_payment(request):
            if self.cashier is None:
                return payments_disabled()
            minimum = await quote(tabs.top_up, self.rates)
            top_up = TopUp(admitted.grant.tab if admitted is not None else None, tabs.lasts)
            try:
                admitted = await by_payment(self.cashier, request, match, minimum.satoshis, top_up)
            except PaymentError as exc:
                if exc.status == 402:
                    return await self._tab_challenge(request, match, exc)
                return problem(exc.status, exc.reason, "Payment not processed", exc.detail)
        unit, _, _ = await self.unit_price(request, match)
        if admitted is None:
            if unit == 0:  # a full concession: served free
                return await self.proxy.forward(request, match)
            return await self._unpaid(request, match, self._tab_challenge)
        tab = admitted.grant.tab
        reply = self._reply(admitted.paid)
        reply[TAB] = tab
        held = most_msat(meter, unit)
        reservation = uuid.uuid4().hex
        balance = await self.store.reserve(tab, held, reservation, HOLD_TTL)
        if balance is None:
            left = await self.store.balance(tab) or 0
            refusal = PaymentError(
                "tab-exhausted",
                f"the tab holds {sats(left)} satoshis and this request may cost up to "
                f"{sats(held)}: top it up",
            )
            response = await self._tab_challenge(request, match, refusal, balance=left)
            response.headers.extend(reply)
            return response
        metering = Metering(meter, unit, held, balance, bodiless=request.method == "HEAD")
        try:
            return await self.proxy.forward(
                request, match, {GRANT_HEADER: admitted.upstream_header}, reply, metering
            )
        finally:
            charge = metering.charge()
            metrics.METERED.labels(match.service.name).inc(charge)
            if self.tally is not None:
                self.tally.add(
                    match.service.name,
                    match.route.scope,
                    metered_msat=charge,
                    refunds=int(charge == 0 and held > 0),
                )
            try:
                await self.store.settle(tab, reservation, charge)
            except StoreUnavailable:
                # The hold returns to the tab when it expires: unbilled, not lost.
                log.error("could not settle a metered request on tab %s: store unavailable", tab)


def _fiat(quoted: Quote) -> dict[str, str] | None:
    if quoted.rate is None or quoted.cents is None:
        return None
    return {
        "amount": f"{quoted.cents / 100:.4f}".rstrip("0").rstrip("."),
        "currency": quoted.rate.currency,
        "rate": f"{quoted.rate.per_bsv:.2f}",
    }


def _concession(quoted: Quote) -> dict[str, Any] | None:
    if quoted.concession is None:
        return None
    return {
        "name": quoted.concession.description or quoted.concession.name,
        "discount": quoted.concession.discount,
        "full": quoted.full_satoshis,
    }

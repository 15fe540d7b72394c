"""One request, start to end: the state machine and nothing else.

canonical path -> Farebox's own URL (the router) | policy match ->
free (quota) | priced: grant (token) | payment (intake) | tab (metering)
| nothing: the 402 challenge -> proxy. Every grant, from a token or a
payment, passes the one admission decision (payments/admission.py); every
error raised below becomes its problem+json in pipeline/errors.py.
"""

from __future__ import annotations

import contextvars
import hashlib
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from gateway.challenge.paywall import problem_page, wants_html
from gateway.challenge.respond import challenge, kept_402, kept_key
from gateway.edge import cors, logs, metrics, urls
from gateway.edge.forwarded import client_address, is_trusted
from gateway.edge.lane import Known, LaneRequest, Ready
from gateway.edge.paths import PathError, Target, canonicalize
from gateway.edge.problems import OURS, payments_disabled, problem
from gateway.edge.protocol import SERVER
from gateway.errors import PaymentError
from gateway.payments.admission import Wanted
from gateway.payments.cashier import Accepted, Cashier
from gateway.payments.intake import (
    from_request,
    has_payment,
    log_refused,
    paid_headers,
    purchase,
    take,
)
from gateway.payments.remittance import Remittance
from gateway.peer import PEER
from gateway.pipeline import metering, rewards
from gateway.pipeline.credentials import (
    GRANT_HEADER,
    NotYetValid,
    Opened,
    keep_for_peer,
    kept_for_peer,
    opened,
    paid_upstream_header,
    token_headers,
    too_early,
)
from gateway.pipeline.errors import problem_for
from gateway.policy import Match, NoMatch, Policy
from gateway.pricing import quote
from gateway.pricing.concessions import HEADER as ELIGIBILITY
from gateway.pricing.concessions import free_quota_holder
from gateway.pricing.quota import client_of, ratelimit_headers
from gateway.proxy.forward import Proxy
from gateway.services import Services
from gateway.store import StoreUnavailable, Window

MAX_HEADER_BYTES = 64 * 1024
# Per request: decide only, never proxy (an nginx auth_request subrequest).
# A context variable, not a request key: asked on every request, and a miss on
# a request key costs a raised KeyError.
AUTH_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("auth_only", default=False)
# Per request: the CORS headers for an allowed cross-origin payment (a context
# variable too: read on every priced request).
CORS: contextvars.ContextVar[CIMultiDict[str] | None] = contextvars.ContextVar("cors", default=None)
PRICED = "X-Farebox-Priced"  # on an auth_request 204: the route has a price
STORE_RECHECK = 30.0  # seconds after a store failure during which unpaid requests ping it
_UNMATCHED_TITLES = {403: "Forbidden", 404: "Not found", 410: "Gone"}
# Request headers (lower case, as the lane reads them) that cannot change what
# an unpaid request to a priced route is answered: not a credential
# (Authorization, Cookie), a payment (x-bsv-*, Payment-Signature, X-Payment),
# a concession (X-Farebox-Eligibility), an Origin (CORS), or anything unknown.
# X-Forwarded-* only change the origin, which the kept 402 is keyed on.
_PLAIN_HEADERS = frozenset(
    name.encode()
    for name in (
        "host", "user-agent", "accept", "accept-encoding", "accept-language", "connection",
        "keep-alive", "cache-control", "pragma", "referer", "dnt", "te", "x-request-id",
        "upgrade-insecure-requests", "priority", "if-none-match", "if-modified-since",
        "sec-fetch-dest", "sec-fetch-mode", "sec-fetch-site", "sec-fetch-user",
        "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip",
    )
)  # fmt: skip

# Request headers the express path takes: those of _PLAIN_HEADERS and the
# places a token comes in (Authorization, Cookie). Not a payment, a
# concession, an Origin (CORS) or anything unknown: those go the long way.
_EXPRESS_HEADERS = _PLAIN_HEADERS | {b"authorization", b"cookie"}

Router = Callable[[web.BaseRequest, str], Awaitable[web.StreamResponse]]
Challenge = Callable[[web.BaseRequest, Match], Awaitable[web.Response]]


class Gateway:
    """The public listener's handler: `handle(request) -> response`.

    `router` answers Farebox's own URLs (endpoints/routes.py); the worker
    hands it over, so the pipeline never imports the endpoints.
    """

    def __init__(self, services: Services, proxy: Proxy, router: Router | None = None) -> None:
        self.services = services
        self.proxy = proxy
        self.router = router
        self._store_failed = -1e9
        # takes() of heads the lane keeps (LaneRequest.head), for the policy
        # `_looked_policy`: a pure look at the head's bytes and the policy.
        self._looked_policy: Policy | None = None
        self._looked: dict[bytes, tuple[bool, tuple[Target, Match | NoMatch] | None]] = {}

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse | Ready:
        if type(request) is LaneRequest:
            match = self._express_match(request)
            if match is not None:
                answer = await self._express(request, match)
                if answer is not None:
                    return answer
        rid = logs.request_id(request)
        peers = self.services.peers
        if (
            peers is not None
            and not isinstance(request, LaneRequest)  # the lane's takes() asked already
            and peers.asks(request)
            and not _is_auth_request(request)
        ):
            # BRC-104: checked before anything else, answered signed (as it
            # is: a page made from it now would no longer match its signature).
            response = await peers.serve(request, self._mapped)
        else:
            response = _for_people(request, await self._mapped(request))
        if not response.prepared:
            response.headers[logs.HEADER] = rid
            response.headers.setdefault("Server", SERVER)
        return response

    def _express_match(self, request: LaneRequest) -> Match | None:
        """The match of a lane request the express path may answer, or None.

        A route without a reward: free without a free quota (nothing to
        decide: `_matched` lets it straight through), or priced (sold per
        grant, or metered per request or per unit: per MB streams with
        small buffers) with a token presented; every header one that cannot
        change more than the grant found (`_EXPRESS_HEADERS`: no payment,
        no concession, no Origin). The lane access-logs its answers as any
        other (`Ready` carries its status and request id).
        """
        routed = request.routed
        if routed is None:
            return None
        match = routed[1]
        if isinstance(match, NoMatch):
            return None
        route = match.route.route
        if route.reward is not None or (route.meter is not None and route.meter.per == "mb"):
            return None  # owed as the answer passes; streamed with small buffers
        names = request.names
        if not _EXPRESS_HEADERS.issuperset(names):
            return None
        if route.price.free:
            if route.free_quota is not None:  # counted in the store, the long way
                return None
        elif self.services.tokens is None or (
            b"authorization" not in names and b"cookie" not in names
        ):
            return None
        return match

    async def _express(
        self, request: LaneRequest, match: Match
    ) -> Ready | web.StreamResponse | None:
        """A token-paid or free request in one coroutine: `_granted`'s admission
        and `passed`'s proxying, without the walk through the pipeline's steps.

        The decision is the same: a free route (no quota: `_express_match`)
        is let through as `_matched` lets it; a priced one is `opened`, the
        first token whose grant covers the request and `admit` opens
        (revocation included). Anything else (no token verified before that
        admits it, one not valid yet, a revoked grant, the store failing)
        returns None before anything is sent or counted, and `handle`
        decides it the long way. The answer is `forward`'s, counted in the
        same metrics and tallies.
        """
        started = time.perf_counter()
        services = self.services
        admitted = None
        if not match.route.route.price.free:
            wanted = Wanted.of(match, request.method)
            try:
                # Tokens verified before only: a new (or junk) one has its
                # signature checked once, the long way, not here and there.
                admitted = (
                    await opened(
                        services.tokens, request, wanted, services.revocations, decode=False
                    )
                ).admitted
                if admitted is None:
                    return None
            except (NotYetValid, StoreUnavailable):
                return None  # the pipeline answers it: a 402 that says why, or a 503
        rid = logs.request_id(request)
        service, scope = match.service.name, match.route.scope
        logs.SERVED.set((service, scope))
        extra = {} if admitted is None else {GRANT_HEADER: admitted.upstream_header}
        answer: Ready | web.StreamResponse
        try:
            if admitted is None or match.route.route.meter is None:
                answer = await self.proxy.express(request, match, extra, rid=rid)
            else:  # metering.draw's hold, proxy and settle, on the tab the token draws on
                answer = await metering.express(self, request, match, admitted.grant, extra, rid)
        except StoreUnavailable as exc:  # as _priced maps them
            self.store_failed()
            answer = problem_for(exc)
        except Exception as exc:
            answer = problem_for(exc)
        self._counted(service, scope, answer.status, started)
        if type(answer) is Ready:
            return answer
        answer = _for_people(request, answer)
        if not answer.prepared:
            answer.headers[logs.HEADER] = rid
            answer.headers.setdefault("Server", SERVER)
        return answer

    def takes(self, request: LaneRequest) -> bool:
        """Whether the lane (edge/lane.py) may answer `request` through `handle`.

        Every request but those only aiohttp's side serves: Farebox's own
        URLs, BRC-104 requests (answered signed, whole), rewarded routes
        (owed as the answer passes), upstreams over https (aiohttp's
        client). A pure look at the request and the policy: no store, no
        I/O, so a refusal changes nothing.
        """
        policy = self.services.policy.current
        if policy is not self._looked_policy:  # a reload: nothing looked at before holds
            self._looked_policy, self._looked = policy, {}
        head = request.head
        if head:  # a head the lane keeps: looked at lately, the same answer
            seen = self._looked.get(head)
            if seen is not None:
                request.routed = seen[1]
                return seen[0]
        taken = self._takes(request, policy)
        if head:
            if len(self._looked) >= 1024:
                self._looked.clear()
            self._looked[head] = (taken, request.routed)
        return taken

    def _takes(self, request: LaneRequest, policy: Policy) -> bool:
        peers = self.services.peers
        if peers is not None and peers.asks(request):  # type: ignore[arg-type]
            return False
        try:
            target = canonicalize(request.raw_path)
            if urls.is_own(target.path):
                return False
            match = policy.match(request.host, target, request.method)
        except ValueError:  # PathError, HostError: their 400s are plain answers
            return True
        request.routed = (target, match)
        if isinstance(match, NoMatch):
            return True
        route = match.route.route
        return route.reward is None and match.service.upstream.startswith("http://")

    def quick(self, request: LaneRequest) -> Known | None:
        """The 402 the pipeline would answer `request` with, when it is sure
        to be a JSON 402 challenge() rendered in the last second; else None
        (then `handle` answers it): its header lines and body for the lane to
        write, and what the access log says of it.

        Sure means: a route sold per grant at a price in satoshis, with no
        free quota, no reward, no meter; a request whose every header is one
        that cannot change the decision (`_PLAIN_HEADERS`: no credential, no
        payment in any protocol, no concession, no Origin) and does not ask
        for a page; a store not failing lately. _granted would find no grant,
        no payment, no quota and answer challenge(); this answers what that
        rendered, counted in the same metrics and tallies, so it is the same
        decision, made without the walk through the pipeline.
        """
        started = time.perf_counter()
        routed = request.routed
        if routed is None or not _PLAIN_HEADERS.issuperset(request.names):
            return None
        match = routed[1]
        if isinstance(match, NoMatch):
            return None
        route = match.route.route
        price = route.price
        if (
            price.free
            or price.currency is not None
            or route.meter is not None
            or route.reward is not None
            or route.free_quota is not None
            or time.monotonic() - self._store_failed < STORE_RECHECK
            or (b"accept" in request.names and wants_html(request.headers.get("Accept")))
        ):
            return None
        policy = self.services.policy.current
        key = kept_key(
            self.services,
            match,
            request.method,
            self.origin(request),  # type: ignore[arg-type]
            request.raw_path,
            (price.satoshis, None, None),  # as rates.quote() quotes a price in satoshis
        )
        kept = kept_402(policy, key)
        if kept is None:
            return None
        # The id is not made this request's context's: no task runs for it.
        rid = logs.id_for(request.headers.get(logs.HEADER, ""))
        self._counted(match.service.name, match.route.scope, 402, started)
        lines = kept.lines + f"{logs.HEADER}: {rid}\r\nServer: {SERVER}\r\n".encode()
        return Known(lines, kept.body, rid, (match.service.name, match.route.scope))

    def store_failed(self) -> None:
        """The store just failed (a call, the start-up ping): until it answers
        a ping again, unpaid requests to priced routes get 503, not a 402
        that invites paying into an outage."""
        self._store_failed = time.monotonic()

    async def _mapped(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except Exception as exc:  # the one mapping of this listener
            return problem_for(exc)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        routed = request.routed if isinstance(request, LaneRequest) else None
        if routed is not None:  # the lane's look at it (takes), not taken twice
            target, match = routed
            policy = self.services.policy.current
        else:
            found = await self._route(request)
            if isinstance(found, web.StreamResponse):
                return found
            target, match, policy = found
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
        service, route = match.service.name, match.route.scope
        logs.SERVED.set((service, route))
        response = await self._matched(request, match)
        self._counted(service, route, response.status, started)
        return response

    def _counted(self, service: str, route: str, status: int, started: float) -> None:
        """Count one answered request in the metrics and the transparency tallies
        (`started`: time.perf_counter() at its arrival)."""
        metrics.answered(service, route, status, time.perf_counter() - started)
        tally = self.services.tally
        if tally is not None:
            tally.add(
                service,
                route,
                requests=1,
                challenges=int(status == 402),
                upstream_errors=int(status in (502, 504)),
            )

    async def _route(
        self, request: web.BaseRequest
    ) -> tuple[Target, Match | NoMatch, Policy] | web.StreamResponse:
        """The request's canonical target, its match and the policy matched
        against; or the answer already due (a bad target, Farebox's own URL,
        no Host, a CORS preflight)."""
        try:
            target = canonicalize(request.raw_path)
        except PathError as exc:
            metrics.REQUESTS.labels("", "", 400).inc()
            return problem(400, exc.reason, "Bad request target", exc.detail)
        if urls.is_own(target.path):
            if self.router is None:
                return problem(
                    404, "no-route", "Not found", f"no Farebox endpoint at {target.path}"
                )
            return await self.router(request, target.path)
        if not request.headers.get("Host", "").strip():
            # Without a Host the upstream picks its default virtual host,
            # often the priced one: nothing to match a host-bound service on.
            return problem(400, "bad-host", "Bad Host header", "a request needs a Host header")
        policy = self.services.policy.current
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            preflight = self._preflight(request, target)
            if preflight is not None:
                return preflight
        return target, policy.match(request.host, target, request.method), policy

    async def _matched(self, request: web.BaseRequest, match: Match) -> web.StreamResponse:
        route = match.route.route
        if route.reward is not None:
            if AUTH_ONLY.get():
                # A reward is owed on the upstream's answer: nginx sends these to Farebox.
                return problem(401, "rewarded-via-farebox", "Proxied by Farebox")
            return await rewards.serve(self, request, match)
        if not route.price.free:
            return await self._priced(request, match)
        if route.free_quota is None:
            return await self.passed(request, match)
        try:
            window = await self._count(request, match)
        except StoreUnavailable:
            return await self.passed(request, match)  # free routes keep working
        return await self._within_quota(request, match, window, over=_over_limit)

    async def passed(
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
            if not match.route.route.price.free:
                # Paid, or free only by quota or concession: nginx keeps the
                # service's answer out of shared caches (farebox-auth-request.conf).
                headers[PRICED] = "1"
            return web.Response(status=204, headers=headers)
        return await self.proxy.forward(request, match, extra, reply)

    def origin(self, request: web.BaseRequest) -> str:
        """scheme://host the client used: a trusted proxy's word for it (TLS in front)."""
        scheme, host = request.scheme, request.host
        if is_trusted(request.remote, self.proxy.trusted):
            scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
            host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
        return f"{scheme}://{host}"

    async def _count(self, request: web.BaseRequest, match: Match) -> Window:
        quota = match.route.route.free_quota
        assert quota is not None and self.services.store is not None
        remote = client_address(
            request.remote, request.headers.get("X-Forwarded-For"), self.proxy.trusted
        )
        client = client_of(quota, request.headers, remote)
        key = f"quota:{match.service.name}:{match.route.scope}:{client}"
        return await self.services.store.hit(key, quota.per)

    async def _within_quota(
        self, request: web.BaseRequest, match: Match, window: Window, over: Challenge
    ) -> web.StreamResponse:
        quota = match.route.route.free_quota
        assert quota is not None
        headers = ratelimit_headers(quota.requests, quota.per, window)
        if window.count <= quota.requests:
            return await self.passed(request, match, None, headers)
        response = await over(request, match)
        response.headers.extend(headers)
        response.headers["Retry-After"] = str(window.resets_in)
        return response

    def _preflight(self, request: web.BaseRequest, target: Target) -> web.Response | None:
        """A browser asking whether a page elsewhere may pay here; None: not ours
        to answer (a free route's upstream answers its own preflights)."""
        wanted = request.headers["Access-Control-Request-Method"].upper()
        match = self.services.policy.current.match(request.host, target, wanted)
        if isinstance(match, NoMatch) or match.route.route.price.free:
            return None
        allow = cors.allowed(match.service.service.cors_origins, request.headers.get("Origin"))
        if allow is None:
            return problem(
                403,
                "origin-not-allowed",
                "Cross-origin payment not allowed",
                f"service {match.service.name!r} takes payments from its own pages only",
            )
        return web.Response(
            status=204, headers=cors.preflight_headers(allow, match.route.route.methods)
        )

    async def _priced(self, request: web.BaseRequest, match: Match) -> web.StreamResponse:
        allow = cors.allowed(match.service.service.cors_origins, request.headers.get("Origin"))
        headers = cors.answer_headers(allow) if allow is not None else None
        reset = CORS.set(headers)
        try:
            response = await self._priced_inner(request, match)
        except StoreUnavailable as exc:
            self.store_failed()
            response = problem_for(exc)  # money rule 4: nothing priced without the store
        except Exception as exc:
            response = problem_for(exc)
        finally:
            CORS.reset(reset)
        if headers is not None and not response.prepared:
            for name, value in headers.items():
                if name.lower() == "vary" and "Vary" in response.headers:
                    response.headers["Vary"] = f"{response.headers['Vary']}, {value}"
                else:
                    response.headers[name] = value
        return response

    def reply(self, paid: Accepted | None) -> CIMultiDict[str]:
        """Headers for a priced answer: a token just bought, CORS for allowed origins."""
        reply: CIMultiDict[str] = CIMultiDict()
        if paid is not None:
            reply.extend(
                token_headers(paid, secure=self.services.cookie_secure, now=int(time.time()))
            )
        allowed = CORS.get()
        if allowed is not None:
            reply.update(allowed)
        return reply

    async def _priced_inner(self, request: web.BaseRequest, match: Match) -> web.StreamResponse:
        if match.route.route.meter is not None:
            if AUTH_ONLY.get():
                # Metering needs the answer: nginx sends these to Farebox to proxy.
                return problem(401, "metered-via-farebox", "Proxied by Farebox")
            return await metering.serve(self, request, match)
        return await self._granted(request, match)

    async def challenge(
        self,
        request: web.BaseRequest,
        match: Match,
        refused: PaymentError | None = None,
    ) -> web.Response:
        return await challenge(self.services, request, match, self.origin(request), refused)

    async def _granted(self, request: web.BaseRequest, match: Match) -> web.StreamResponse:
        """A route sold per grant: a token that admits it, a payment, a free quota, or 402."""
        services = self.services
        wanted = Wanted.of(match, request.method)
        early: NotYetValid | None = None
        kept = await kept_for_peer(services.store, match.service.name, match.scope)
        try:
            tried = await opened(
                services.tokens, request, wanted, services.revocations, kept, keeper=services.store
            )
        except NotYetValid as refused:  # minted by a clock running ahead: not unknown
            tried, early = Opened(None, []), refused
        if tried.admitted is not None:
            return await self.passed(
                request, match, {GRANT_HEADER: tried.admitted.upstream_header}, self.reply(None)
            )
        if tried.refused and not has_payment(request.headers):
            return await self.challenge(request, match, tried.refused[0][1])
        # A payment beside grants that no longer open it: take the payment.
        policy = services.policy.current
        quoted = await quote.price(policy, services.rates, request.headers, match)
        if quoted.satoshis == 0:  # a full concession: served free
            return await self.passed(request, match)
        if not has_payment(request.headers):
            ask = self.challenge if early is None else too_early(self.challenge, early)
            return await self.unpaid(request, match, ask)
        cashier = services.cashier
        if cashier is None:
            return payments_disabled()
        try:
            payment = self.payment(request, cashier)
            bought = purchase(match, request.method, quoted.satoshis)
            accepted = await take(cashier, services.revocations, payment, bought)
        except PaymentError as refused:
            log_refused(match, quoted.satoshis, refused)
            if refused.status != 402:
                raise
            return await challenge(services, request, match, self.origin(request), refused, quoted)
        await keep_for_peer(services.store, accepted)
        upstream = paid_upstream_header(cashier.tokens, accepted)
        reply = self.reply(accepted)
        reply.update(paid_headers(payment, accepted))
        return await self.passed(request, match, {GRANT_HEADER: upstream}, reply)

    def payment(self, request: web.BaseRequest, cashier: Cashier) -> Remittance:
        """The payment a priced request carries, in whichever protocol; PaymentError."""
        peers = self.services.peers
        return from_request(
            request.headers,
            cashier.beef_limits.max_bytes,
            PEER.get(),
            peers.nonces if peers is not None else None,
            x402_network=self.services.x402_network,
            server=self.services.server_key,
        )

    async def unpaid(
        self, request: web.BaseRequest, match: Match, challenge: Challenge
    ) -> web.StreamResponse:
        """No grant, no payment: a free quota if one is left, else the challenge.

        A concession holder's own quota (counted per holder) goes first, then
        the route's (counted per client network).
        """
        store = self.services.store
        assert store is not None
        offered = quote.offered(self.services.policy.current, match)
        holder = free_quota_holder(request.headers.get(ELIGIBILITY), offered)
        if holder is not None:
            concession, who = holder
            quota = concession.free_quota
            assert quota is not None
            digest = hashlib.sha256(who.encode("utf-8", "surrogatepass")).hexdigest()[:32]
            key = (
                f"quota:{match.service.name}:{match.route.scope}:holder:{concession.name}:{digest}"
            )
            window = await store.hit(key, quota.per)
            if window.count <= quota.requests:
                headers = ratelimit_headers(quota.requests, quota.per, window)
                return await self.passed(request, match, None, headers)
        if match.route.route.free_quota is not None:
            window = await self._count(request, match)
            return await self._within_quota(request, match, window, over=challenge)
        await self._store_usable()  # no challenge that invites paying into an outage
        return await challenge(request, match)

    async def _store_usable(self) -> None:
        """Raise StoreUnavailable if the store failed lately and still does.

        Only after a recent failure does this cost a ping, so an unpaid
        request normally touches no store at all.
        """
        store = self.services.store
        if store is not None and time.monotonic() - self._store_failed < STORE_RECHECK:
            await store.ping()
            self._store_failed = -1e9


async def _over_limit(request: web.BaseRequest, match: Match) -> web.Response:
    return problem(
        429,
        "quota-exhausted",
        "Too many requests",
        f"the free quota of {match.route.scope} is used up for now",
    )


def _for_people(request: web.BaseRequest, response: web.StreamResponse) -> web.StreamResponse:
    """Farebox's own error as a page for a person in a browser (programs keep
    problem+json; the paywall is a page of its own; an upstream's error is
    the upstream's)."""
    if (
        isinstance(response, web.Response)
        and response.status >= 400
        and response.status != 402
        and response.get(OURS, False)
        and wants_html(request.headers.get("Accept"))
    ):
        return problem_page(response, request.headers.get("Accept-Language"))
    return response


def _is_auth_request(request: web.BaseRequest) -> bool:
    """nginx's auth_request subrequest: it carries the client's headers, but
    asks about another request, which auth_request.py decides."""
    return request.raw_path.partition("?")[0] == urls.AUTH

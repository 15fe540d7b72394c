"""nginx `auth_request`: may the original request go to the upstream?

nginx asks `/.well-known/farebox/auth` with `X-Original-URI` and
`X-Original-Method`; the gateway decides exactly as for a request it would
proxy (AUTH_ONLY: decide, never proxy). 204 (with X-Farebox-Grant for the
upstream, and a token just bought for the client) or 401: nginx then sends
the request to Farebox itself (error_page 401), which answers the 402
challenge, a problem, or proxies it (metered routes, and BRC-104 signed
requests, whose answers only Farebox can sign). nginx accepts only
2xx, 401 and 403 from an auth subrequest, hence 401 for everything else.

A 204 that depends on nothing but (method, host, request URI, the
Authorization and Cookie headers) and changes nothing carries
`X-Accel-Expires: N`, and nginx keeps it for N seconds (its
`proxy_cache` in nginx/farebox-auth-request.conf, keyed on exactly
those): a token admitted on a priced route, and a free route with no
quota. N is at most the revocation cache's time (`Revocations.ttl`), so
the cache adds no more than that to how long a revocation takes to be
seen (nginx/README.md gives the whole bound).
This module imports the gateway; the gateway never imports it.
"""

from __future__ import annotations

import math
import time

from aiohttp import web
from yarl import URL

from gateway.edge import urls
from gateway.edge.forwarded import is_trusted
from gateway.edge.paths import canonicalize
from gateway.edge.problems import problem
from gateway.payments.admission import Wanted
from gateway.payments.intake import has_payment
from gateway.peer.guard import Authenticator
from gateway.pipeline.credentials import GRANT_HEADER, Revocations, covering
from gateway.pipeline.gateway import AUTH_ONLY, PRICED, Gateway
from gateway.policy import NoMatch
from gateway.pricing.concessions import HEADER as ELIGIBILITY

CACHE_HEADER = "X-Accel-Expires"  # nginx: keep this answer for N seconds
DEFAULT_SECONDS = 1  # without a revocation cache to follow (no store): Revocations' default
# The only headers a cacheable 204 may carry. Anything else (a token or
# cookie just issued, PAYMENT-RESPONSE, RateLimit-*, Cache-Control, ...)
# says the answer is not the same for the next request with the same key.
CACHEABLE_HEADERS = frozenset(
    name.lower()
    for name in (
        GRANT_HEADER,
        PRICED,
        "X-Request-Id",
        "Server",
        "Vary",
        "Access-Control-Allow-Origin",
        "Access-Control-Expose-Headers",
    )
)
# nginx counts cache lifetimes in whole seconds of its own clock, so it may
# keep an answer up to a second longer than N: the grant the upstream gets
# from a kept answer must still be valid then.
GRANT_MARGIN = 1


async def authorize(gateway: Gateway, request: web.BaseRequest, _: str = "") -> web.StreamResponse:
    """Answer one auth subrequest: 2xx to let it through, 401 or 403 otherwise.

    A 2xx that nginx may keep carries `X-Accel-Expires: N` (seconds, see
    `cacheable_for`).
    """
    trusted = gateway.proxy.trusted
    if trusted and not is_trusted(request.remote, trusted):
        return problem(403, "not-a-trusted-proxy", "Forbidden", "ask through the proxy")
    uri = request.headers.get("X-Original-URI")
    if not uri:
        return problem(400, "missing-original-uri", "Bad auth request", "X-Original-URI")
    method = request.headers.get("X-Original-Method", "GET").upper()
    try:
        original = request.clone(method=method, rel_url=URL(uri, encoded=True))
    except ValueError:
        return web.Response(status=401)
    if urls.is_own(original.path):
        return web.Response(status=403)  # Farebox's own paths are never authorised this way
    if Authenticator.asks(original):
        # A BRC-104 signed request: its answer must be signed whole, which
        # only Farebox proxying it can do (nginx sends it to @farebox).
        return web.Response(status=401, headers={"Cache-Control": "no-store"})
    reset = AUTH_ONLY.set(True)
    try:
        answer = await gateway.handle(original)
    finally:
        AUTH_ONLY.reset(reset)
    if 200 <= answer.status < 300:
        if not answer.prepared:
            seconds = cacheable_for(gateway, original, answer)
            if seconds > 0:
                answer.headers[CACHE_HEADER] = str(seconds)
        return answer
    refusal = web.Response(status=401, headers={"Cache-Control": "no-store"})
    for name in ("x-bsv-sats", "x-bsv-server"):
        if name in answer.headers:
            refusal.headers[name] = answer.headers[name]
    return refusal


def cacheable_for(gateway: Gateway, original: web.BaseRequest, answer: web.StreamResponse) -> int:
    """Seconds nginx may answer requests like `original` with `answer`; 0: never.

    Only a 204 that depends on nothing but the method, host, request URI
    and the credentials presented (Authorization, Cookie: nginx's cache
    key), and that has no side effect:

    - a priced, non-metered route opened by a token (bearer or cookie),
      no payment in the request and none taken: N = min(the revocation
      cache's seconds, whole seconds left until the grant expires less
      GRANT_MARGIN), so nginx keeps it no longer than a worker keeps its
      answer on a revocation, and the upstream never gets an expired grant;
    - a free route with no free quota and no reward: N = the same
      revocation seconds (a policy change then takes that long too).

    Never: free quotas and concession quotas (each request counts), a
    payment just taken or a token just issued, metered or rewarded routes,
    BRC-104 requests, requests with payment or eligibility headers.
    """
    if answer.status != 204 or any(
        name.lower() not in CACHEABLE_HEADERS for name in answer.headers
    ):
        return 0
    headers = original.headers
    if has_payment(headers) or ELIGIBILITY in headers or Authenticator.asks(original):
        return 0
    services = gateway.services
    try:
        target = canonicalize(original.raw_path)
        match = services.policy.current.match(original.host, target, original.method)
    except Exception:  # any doubt about what was decided: not cacheable
        return 0
    if isinstance(match, NoMatch):
        return 0
    route = match.route.route
    if route.reward is not None or route.meter is not None:
        return 0
    revocations = services.revocations
    bound = math.floor(revocations.ttl) if isinstance(revocations, Revocations) else DEFAULT_SECONDS
    granted = answer.headers.get(GRANT_HEADER)
    if route.price.free:
        # The decision was the policy's alone: no quota counted, no grant.
        free = route.free_quota is None and granted is None and PRICED not in answer.headers
        return bound if free else 0
    if granted is None:
        return 0  # free by a full concession: not the credentials' doing
    try:
        found = covering(services.tokens, original, Wanted.of(match, original.method))
    except Exception:
        return 0
    admitted = next((a for a in found if a.upstream_header == granted), None)
    if admitted is None:
        return 0  # not a token's decision (or not one we can tell): ask again
    left = math.floor(admitted.grant.expires - time.time()) - GRANT_MARGIN
    return max(0, min(bound, left))

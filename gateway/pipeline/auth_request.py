"""nginx `auth_request`: may the original request go to the upstream?

nginx asks `/.well-known/farebox/auth` with `X-Original-URI` and
`X-Original-Method`; the gateway decides exactly as for a request it would
proxy (AUTH_ONLY: decide, never proxy). 204 (with X-Farebox-Grant for the
upstream, and a token just bought for the client) or 401: nginx then sends
the request to Farebox itself (error_page 401), which answers the 402
challenge, a problem, or proxies it (metered routes, and BRC-104 signed
requests, whose answers only Farebox can sign). nginx accepts only
2xx, 401 and 403 from an auth subrequest, hence 401 for everything else.
This module imports the gateway; the gateway never imports it.
"""

from __future__ import annotations

from aiohttp import web
from yarl import URL

from gateway.edge import urls
from gateway.edge.forwarded import is_trusted
from gateway.edge.problems import problem
from gateway.peer.guard import Authenticator
from gateway.pipeline.gateway import AUTH_ONLY, Gateway


async def authorize(gateway: Gateway, request: web.BaseRequest, _: str = "") -> web.StreamResponse:
    """Answer one auth subrequest: 2xx to let it through, 401 or 403 otherwise."""
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
        return answer
    refusal = web.Response(status=401, headers={"Cache-Control": "no-store"})
    for name in ("x-bsv-sats", "x-bsv-server"):
        if name in answer.headers:
            refusal.headers[name] = answer.headers[name]
    return refusal

"""Errors a browser reads as pages (issue 17, point 4): Farebox's own problem
answers (404, 405, 429, 502...) become a page in the paywall's style for a
client that prefers HTML, with the same status and headers; programs keep
problem+json; an upstream's own error passes as the upstream made it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import GatewayFactory

BROWSER = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-GB,en;q=0.9",
}

POLICY = """\
services:
  archive:
    upstream: {upstream}
    mount: /archive
    routes:
      - path: /search
        methods: [GET]
        price: free
        free_quota: {{requests: 1, per: 1h}}
      - path: /own-error
        price: free
  dead:
    upstream: http://127.0.0.1:9
    mount: /dead
    routes:
      - {{path: /x, price: free}}
"""


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    """An upstream that answers with its own problem+json 404."""

    async def own_error(request: web.Request) -> web.Response:
        body = {"title": "Record withdrawn", "status": 404, "detail": "upstream's words"}
        return web.Response(
            status=404, body=json.dumps(body).encode(), content_type="application/problem+json"
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", own_error)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str]
) -> tuple[int, str, dict[str, str], str]:
    async with http.request(method, url, headers=headers) as r:
        return r.status, r.content_type, dict(r.headers), await r.text()


async def test_a_browser_reads_farebox_s_errors_as_pages(
    gateway: GatewayFactory, upstream_url: str
) -> None:
    base = await gateway(POLICY.format(upstream=upstream_url))
    async with aiohttp.ClientSession() as http:
        status, kind, headers, page = await fetch(http, "GET", f"{base}/nothing", BROWSER)
        assert (status, kind) == (404, "text/html")
        assert '<html lang="en">' in page and "<h1>Not found</h1>" in page
        assert "no service offers /nothing" in page and "Check the address" in page
        assert '<a href="/.well-known/farebox/prices">All prices</a>' in page  # a way on
        assert "Accept" in headers["Vary"] and headers["Cache-Control"] == "no-store"

        # The same for a program: problem+json, as before.
        status, kind, _, body = await fetch(http, "GET", f"{base}/nothing", {})
        assert (status, kind) == (404, "application/problem+json")
        assert json.loads(body)["reason"] == "no-route"

        # 405 keeps Allow; 429 keeps Retry-After and the RateLimit fields.
        status, kind, headers, page = await fetch(http, "POST", f"{base}/archive/search", BROWSER)
        assert (status, kind, headers["Allow"]) == (405, "text/html", "GET")
        await fetch(http, "GET", f"{base}/archive/search", BROWSER)  # the one free request
        status, kind, headers, page = await fetch(http, "GET", f"{base}/archive/search", BROWSER)
        assert (status, kind) == (429, "text/html")
        assert headers["Retry-After"] and "RateLimit-Remaining" in headers
        assert "free requests" in page

        # An upstream that does not answer: 502, with what to do about it.
        status, kind, _, page = await fetch(http, "GET", f"{base}/dead/x", BROWSER)
        assert (status, kind) == (502, "text/html") and "Try again" in page

        # The upstream's own error is the upstream's, word for word.
        status, kind, _, body = await fetch(http, "GET", f"{base}/archive/own-error", BROWSER)
        assert (status, kind) == (404, "application/problem+json")
        assert json.loads(body)["detail"] == "upstream's words"

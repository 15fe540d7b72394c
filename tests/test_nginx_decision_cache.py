"""nginx/farebox-auth-request.conf's cache of Farebox's decisions, with a real
nginx (Debian's) and a real `farebox serve` taking payments on a devnet.

Farebox marks a 204 that depends only on (method, host, URI, credentials)
with `X-Accel-Expires` (gateway/pipeline/auth_request.py); nginx keeps it
and asks Farebox again only once it expires. What is counted here is what a
user and an operator see: the service's requests, Farebox's own count of
the decisions it made (farebox_requests_total on the admin API), statuses
and reasons. The bound on a revocation (nginx/README.md) is the one timed
promise and is checked as such: refused within it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jwt
import pytest

from gateway import keys
from tests.conftest import Upstream, recording_app
from tests.farebox_process import serve
from tests.nginx_process import free_port, need_nginx, render, running_nginx, self_signed
from tests.test_nginx import Front, decision_cache, fat_payment, lower, problem_of, start_app

ADMIN_TOKEN = "decision-cache-admin-token-0123456789"
CACHE_DIR = "/var/cache/farebox-nginx"  # the template's; each test renders its own
# nginx/README.md: a revocation is in force through nginx within 3 s (1 s of
# Farebox's revocation cache, then a kept decision of N = 1 s that nginx,
# counting whole seconds, may keep up to 1 s longer).
REVOCATION_BOUND = 3.0

POLICY = """\
services:
  s:
    upstream: {upstream}
    tabs: {{top_up: 1000, lasts: 1d}}
    routes:
      - path: /page/*
        price: 40
        grant: {{lasts: 1h, covers: resource}}
      - path: /doc/*
        methods: [GET]
        price: 40
        grant: {{lasts: 1h, covers: resource}}
      - path: /doc/*
        methods: [POST]
        price: 40
        grant: {{lasts: 1h, covers: resource}}
      - path: /short/*
        price: 40
        grant: {{lasts: 2s, covers: resource}}
      - path: /counted/*
        price: free
        free_quota: {{requests: 3, per: 1h}}
      - path: /calls/{{n}}
        price: 10
        meter: {{per: request}}
      - path: /free/**
        methods: "*"
        price: free
"""


@dataclass
class Cached:
    """nginx with the decision cache in front of Farebox, and Farebox's admin API."""

    front: Front
    admin: str  # http://127.0.0.1:PORT of Farebox's admin listener

    def client(self) -> aiohttp.ClientSession:
        return self.front.client()

    @property
    def base(self) -> str:
        return self.front.base

    async def decisions(self, route: str, status: int = 204) -> int:
        """How many times Farebox answered `route` with `status` (its own metric)."""
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.admin}/metrics", headers=auth) as r,
        ):
            assert r.status == 200
            text = await r.text()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith("farebox_requests_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
            if labels.get("route") == route and labels.get("status") == str(status):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    async def revoke(self, token: str) -> None:
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.admin}/revoke", json={"grant": jti}, headers=auth) as r,
        ):
            assert r.status == 200, await r.text()


@pytest.fixture
async def cached(tmp_path: Path, upstream: Upstream, devnet_http) -> AsyncIterator[Cached]:
    need_nginx()
    url, chain = devnet_http
    cert, cert_key = self_signed(tmp_path)
    async with AsyncExitStack() as stack:
        decoy = Upstream("")  # Farebox's own upstream: nginx, not Farebox, proxies
        decoy.url = await start_app(recording_app(decoy), stack)
        folder = tmp_path / "policies"
        folder.mkdir()
        (folder / "p.yaml").write_text(POLICY.format(upstream=decoy.url))
        key_file = tmp_path / "server.key"
        server_pub = keys.generate(key_file).public_key().hex()
        farebox = await stack.enter_async_context(
            serve(
                "--policies", str(folder), "--key-file", str(key_file), "--port", "0",
                "--devnet-url", url, "--token-keys", str(tmp_path / "tk"),
                "--trusted-proxies", "127.0.0.1", "--no-watch", "--admin-port", "0",
                env={"FAREBOX_ADMIN_TOKEN": ADMIN_TOKEN},
            )
        )  # fmt: skip
        admin = (await farebox.wait_for_log(r"admin API on (http://\S+)")).group(1)
        https, http = free_port(), free_port()
        site = render(
            "farebox-auth-request.conf",
            {
                "listen 443 ssl http2;": f"listen 127.0.0.1:{https} ssl http2;",
                "listen [::]:443 ssl http2;": "",
                "listen 80;": f"listen 127.0.0.1:{http};",
                "listen [::]:80;": "",
                "/etc/ssl/farebox/fullchain.pem": str(cert),
                "/etc/ssl/farebox/privkey.pem": str(cert_key),
                "server 127.0.0.1:8402;": f"server 127.0.0.1:{farebox.port};",
                "server 10.0.0.5:8080;": f"server {upstream.url[7:]};",
                CACHE_DIR: decision_cache(stack),
            },
        )
        await stack.enter_async_context(running_nginx(site, (https, http)))
        front = Front(
            f"https://127.0.0.1:{https}",
            http,
            farebox,
            server_pub,
            url,
            chain,
            upstream,
            cert,
            asyncio.Event(),
        )
        yield Cached(front, admin)
        assert decoy.seen == []


async def buy(gw: Cached, path: str) -> str:
    """Pay for `path` through nginx; the token bought."""
    payment, _ = await fat_payment(gw.front, 40)
    async with gw.client() as http, http.get(gw.base + path, headers=payment) as r:
        assert r.status == 200, await r.text()
        return r.headers["X-Farebox-Token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refused_reason(r: aiohttp.ClientResponse) -> str:
    assert r.status == 402, (r.status, await r.text())
    return (await problem_of(r))["reason"]


async def test_a_token_asks_farebox_once_per_second_and_reaches_the_service_each_time(
    cached: Cached,
) -> None:
    gw = cached
    token = await buy(gw, "/page/1")
    asked = await gw.decisions("/page/*")
    served = len(gw.front.upstream.seen)
    started = time.monotonic()
    async with gw.client() as http:
        for _ in range(20):
            async with http.get(f"{gw.base}/page/1", headers=bearer(token)) as r:
                assert r.status == 200 and r.headers["X-Upstream"] == "yes"
                # A kept decision still makes a private answer, with the grant
                # for the service.
                assert r.headers["Cache-Control"] == "private"
            seen = lower(gw.front.upstream.seen[-1].headers)
            grant = jwt.decode(seen["x-farebox-grant"], options={"verify_signature": False})
            assert grant["scope"] == "/page/1" and grant["aud"] == "farebox:upstream"
            assert "authorization" not in seen
    elapsed = time.monotonic() - started
    assert len(gw.front.upstream.seen) == served + 20  # the service, every time
    # Farebox: once, and once more per second nginx kept the answer (> 1 s each).
    new = await gw.decisions("/page/*") - asked
    assert 1 <= new <= 1 + int(elapsed)
    assert new < 20


async def test_a_revoked_token_is_refused_within_the_bound(cached: Cached) -> None:
    gw = cached
    token = await buy(gw, "/page/1")
    other = await buy(gw, "/page/1")
    async with gw.client() as http:
        for presented in (token, other):
            async with http.get(f"{gw.base}/page/1", headers=bearer(presented)) as r:
                assert r.status == 200
        await gw.revoke(token)
        revoked = time.monotonic()
        while True:
            async with http.get(f"{gw.base}/page/1", headers=bearer(token)) as r:
                if r.status == 402:
                    assert (await problem_of(r))["reason"] == "grant-revoked"
                    break
                assert r.status == 200
            assert time.monotonic() - revoked < REVOCATION_BOUND + 1, "still open past the bound"
            await asyncio.sleep(0.05)
        # It stays refused (a refusal is never kept), and the other token,
        # another entry, still opens the page.
        for _ in range(3):
            async with http.get(f"{gw.base}/page/1", headers=bearer(token)) as r:
                assert await refused_reason(r) == "grant-revoked"
        async with http.get(f"{gw.base}/page/1", headers=bearer(other)) as r:
            assert r.status == 200


async def test_a_kept_yes_opens_only_its_own_page_method_and_token(cached: Cached) -> None:
    gw = cached
    page = await buy(gw, "/page/1")
    doc = await buy(gw, "/doc/1")
    async with gw.client() as http:
        async with http.get(f"{gw.base}/page/1", headers=bearer(page)) as r:
            assert r.status == 200  # kept now
        # Another page with the same token: refused, each time.
        for _ in range(2):
            async with http.get(f"{gw.base}/page/2", headers=bearer(page)) as r:
                assert await refused_reason(r) == "payment-required"
            async with http.get(f"{gw.base}/page/1?x=1", headers=bearer(page)) as r:
                assert r.status == 200  # the same page: its own entry, Farebox says yes
        # Another method: GET was bought, POST was not.
        async with http.get(f"{gw.base}/doc/1", headers=bearer(doc)) as r:
            assert r.status == 200
        for _ in range(2):
            async with http.post(f"{gw.base}/doc/1", headers=bearer(doc), data=b"") as r:
                assert await refused_reason(r) == "payment-required"
        # Tokens that are not the kept one never get its yes: a forged
        # signature, garbage, another cookie spelling, the kept token
        # beside a bad one in a second entry of the key.
        head, payload, signature = page.split(".")
        flipped = "A" if signature[0] != "A" else "B"
        for headers in (
            bearer(f"{head}.{payload}.{flipped}{signature[1:]}"),
            bearer("garbage"),
            {"Cookie": f"FAREBOX_TOKEN={page}"},
            {"Cookie": f"farebox_token=x{page}"},
        ):
            async with http.get(f"{gw.base}/page/1", headers=headers) as r:
                assert await refused_reason(r) == "payment-required", headers
        # The same token as the cookie: its own entry, and a yes.
        before = await gw.decisions("/page/*")
        for _ in range(3):
            async with http.get(
                f"{gw.base}/page/1", headers={"Cookie": f"lang=en; farebox_token={page}"}
            ) as r:
                assert r.status == 200
        assert await gw.decisions("/page/*") - before in (1, 2)


async def test_two_tokens_are_two_entries(cached: Cached) -> None:
    gw = cached
    first = await buy(gw, "/page/1")
    second = await buy(gw, "/page/1")
    async with gw.client() as http:
        async with http.get(f"{gw.base}/page/1", headers=bearer(first)) as r:
            assert r.status == 200
        before = await gw.decisions("/page/*")
        async with http.get(f"{gw.base}/page/1", headers=bearer(second)) as r:
            assert r.status == 200
        assert await gw.decisions("/page/*") == before + 1  # asked: not the first's entry
        seen = lower(gw.front.upstream.seen[-1].headers)
        grant = jwt.decode(seen["x-farebox-grant"], options={"verify_signature": False})
        assert grant["jti"] == jwt.decode(second, options={"verify_signature": False})["jti"]


async def test_a_token_about_to_expire_is_never_kept(cached: Cached) -> None:
    # A 2 s grant: nginx might keep a yes past the grant's exp, so Farebox
    # never marks it (the service must never get an expired grant).
    gw = cached
    token = await buy(gw, "/short/1")
    before = await gw.decisions("/short/*")
    async with gw.client() as http:
        for _ in range(3):
            async with http.get(f"{gw.base}/short/1", headers=bearer(token)) as r:
                assert r.status == 200
    assert await gw.decisions("/short/*") == before + 3


async def test_payments_are_never_answered_from_the_cache(cached: Cached) -> None:
    gw = cached
    payment, _ = await fat_payment(gw.front, 40)
    async with gw.client() as http:
        async with http.get(f"{gw.base}/page/1", headers=payment) as r:
            assert r.status == 200
            token = r.headers["X-Farebox-Token"]
        async with http.get(f"{gw.base}/page/1", headers=bearer(token)) as r:
            assert r.status == 200  # a yes kept for the token
        before = await gw.decisions("/page/*")
        # The payment again, with or without the token: Farebox answers it
        # (the same grant back: a token is only ever in a fresh answer).
        for headers in (payment, {**payment, **bearer(token)}):
            async with http.get(f"{gw.base}/page/1", headers=headers) as r:
                assert r.status == 200
                assert r.headers.get("X-Farebox-Token") == token or "Authorization" in headers
        assert await gw.decisions("/page/*") == before + 2
        # The payment for another page: payment-reused, every time.
        for _ in range(2):
            async with http.get(f"{gw.base}/page/2", headers=payment) as r:
                assert await refused_reason(r) == "payment-reused"
        # A payment header whose value reads as false to nginx ("0") still
        # keeps the request away from the cache.
        before = await gw.decisions("/page/*")
        async with http.get(f"{gw.base}/page/1", headers={**bearer(token), "x-bsv-vout": "0"}) as r:
            assert r.status == 200
        assert await gw.decisions("/page/*") == before + 1


async def test_free_routes_quotas_and_metered_routes(cached: Cached) -> None:
    gw = cached
    async with gw.client() as http:
        # A free route without a quota: kept; the service answers every time.
        before, served = await gw.decisions("/free/**"), len(gw.front.upstream.seen)
        for _ in range(5):
            async with http.get(f"{gw.base}/free/a") as r:
                assert r.status == 200 and r.headers["X-Upstream"] == "yes"
        assert len(gw.front.upstream.seen) == served + 5
        assert await gw.decisions("/free/**") - before in (1, 2)
        # A free quota counts every request, exactly.
        remaining = []
        for _ in range(4):
            async with http.get(f"{gw.base}/counted/x") as r:
                remaining.append((r.status, r.headers.get("RateLimit-Remaining")))
        assert remaining == [(200, "2"), (200, "1"), (200, "0"), (429, "0")]
        # A metered route: Farebox proxies it itself; nothing kept.
        before = await gw.decisions("/calls/{n}", 401)
        for _ in range(3):
            async with http.get(f"{gw.base}/calls/1") as r:
                assert r.status == 402
        assert await gw.decisions("/calls/{n}", 401) == before + 3

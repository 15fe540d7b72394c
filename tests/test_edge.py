"""The edge as an attacker meets it (issue 12): header twins, credential cookie
spellings, header totals and shared caches, on real servers.

- A header named with `_` never reaches the upstream: CGI, WSGI and PHP read
  `X_Farebox_Grant` as `X-Farebox-Grant`.
- The credential cookie counts only when spelled exactly (RFC 6265), and no
  spelling any parser could read as it reaches the upstream.
- Request headers over 256 KiB in all get 431 on every path, before any work.
- Answers on priced routes are private to caches in front; a 402 is never
  stored; free answers keep the upstream's caching.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from bsv import PrivateKey
from multidict import CIMultiDict

from gateway import keys
from gateway.payments.cashier import Cashier
from gateway.pipeline.credentials import Revocations
from gateway.store.memory import MemoryStore
from gateway.tokens import Grant, KeyRing, Tokens
from tests.chainkit import Tracker, atomic_beef, pay
from tests.conftest import PAID_SERVER, GatewayFactory, Paid, Upstream, raw_request
from tests.farebox_process import serve
from tests.nginx_process import free_port, running_nginx
from tests.test_paid_access import FakeBroadcaster

CLIENT = PrivateKey(0xED6E)

FREE_POLICY = """\
services:
  svc:
    upstream: {upstream}
    routes:
      - path: /**
        methods: "*"
        price: free
"""


def payment(tracker: Tracker, sats: int) -> dict[str, str]:
    """BRC-121 headers paying `sats` to PAID_SERVER (a fresh nonce each time)."""
    time_ms = int(time.time() * 1000)
    suffix = base64.b64encode(str(time_ms).encode()).decode()
    nonce = base64.b64encode(os.urandom(8)).decode()
    p = pay(PAID_SERVER.public_key(), CLIENT, sats, tracker, prefix=nonce, suffix=suffix)
    return {
        "x-bsv-beef": base64.b64encode(atomic_beef(p.tx)).decode(),
        "x-bsv-sender": CLIENT.public_key().hex(),
        "x-bsv-nonce": nonce,
        "x-bsv-time": str(time_ms),
        "x-bsv-vout": "0",
    }


def raw_headers(**fields: str) -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in fields.items())


# --- 4. header twins ------------------------------------------------------------------

# Names Farebox sets, strips or reads, spelled with '_' (and one of nobody's).
TWINS = {
    "X_Farebox_Grant": "forged-grant",
    "x_farebox_token": "t",
    "X_Forwarded_For": "6.6.6.6",
    "X_Forwarded_Host": "evil.example",
    "X_Forwarded_Proto": "https",
    "X_Real_IP": "6.6.6.6",
    "Forwarded_": "for=6.6.6.6",
    "X_BSV_Beef": "AQID",
    "X_Request_Id": "forged",
    "Proxy_Authorization": "Basic eDp5",
    "Transfer_Encoding": "chunked",
    "Content_Length": "5",
    "Some_Header": "1",
}


async def test_underscore_twins_of_headers_never_reach_the_upstream(
    gateway: GatewayFactory, upstream: Upstream
) -> None:
    base = await gateway(FREE_POLICY.format(upstream=upstream.url))
    status, _ = await raw_request(
        base, "/doc", headers=raw_headers(**TWINS, **{"X-Kept": "yes", "Cookie": "a=1"})
    )
    assert status == 200
    (seen,) = upstream.seen
    assert [name for name in seen.headers if "_" in name] == []
    assert seen.headers["X-Kept"] == "yes" and seen.headers["Cookie"] == "a=1"
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"
    assert "X-Farebox-Grant" not in seen.headers
    # Over a pooled keep-alive connection (aiohttp client) as well.
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/form", data=b"body", headers=TWINS) as r,
    ):
        assert r.status == 200
    assert [name for name in upstream.seen[-1].headers if "_" in name] == []


# --- 5. credential cookie spellings ---------------------------------------------------


def token_for(paid: Paid, resource: str) -> str:
    grant = Grant(
        os.urandom(8).hex(),
        "archive",
        resource,
        "resource",
        ("GET",),
        int(time.time()) + 3600,
        "00" * 32,
        25,
        "p",
    )
    return paid.tokens.mint(grant)


# Spellings of the credential cookie a lenient parser reads as it (SimpleCookie,
# aiohttp, PHP, .NET, RFC 2965 ones): none is a credential, none reaches upstream.
LOOSE_SPELLINGS = [
    "farebox_token ={t}",
    "farebox_token= {t}",
    "farebox_token = {t}",
    "farebox_token\t={t}",
    "FAREBOX_TOKEN={t}",
    "Farebox_Token={t}",
    'farebox_token="{t}"',
    "'farebox_token'={t}",
    '"farebox_token"={t}',
    "farebox.token={t}",
    "farebox token={t}",
    "farebox+token={t}",
    "farebox%5Ftoken={t}",
    "%66arebox_token={t}",
    "farebox_token[x]={t}",
    "farebox.token[x]={t}",
    "a=1, farebox_token={t}",
    "a=1,farebox_token={t}",
    "farebox_token={t}, b=2",
    "farebox_token={t},",
    "farebox_token={t}\\",
]


@pytest.mark.parametrize("spelling", LOOSE_SPELLINGS)
async def test_credential_cookie_read_strictly_and_kept_from_upstream(
    paid_gateway, upstream: Upstream, spelling: str
) -> None:
    paid = await paid_gateway(Tracker(), FakeBroadcaster())
    token = token_for(paid, "/archive/pages/1")
    cookie = f"before=1; {spelling.format(t=token)}; after=2"

    # The exact spelling opens the page (and never reaches the upstream)...
    status, body = await raw_request(
        paid.base, "/archive/pages/1", headers=f"Cookie: before=1; farebox_token={token}\r\n"
    )
    assert status == 200, body
    assert upstream.seen[-1].headers["Cookie"] == "before=1"
    served = len(upstream.seen)

    # ...a loose one is no credential...
    status, body = await raw_request(paid.base, "/archive/pages/1", headers=f"Cookie: {cookie}\r\n")
    assert status == 402, body
    assert len(upstream.seen) == served

    # ...and on a free route the upstream never sees it; the other cookies pass.
    status, _ = await raw_request(paid.base, "/archive/free", headers=f"Cookie: {cookie}\r\n")
    assert status == 200
    sent = upstream.seen[-1].headers.get("Cookie", "")
    assert token not in sent
    assert "before=1" in sent and "after=2" in sent


async def test_every_credential_cookie_is_tried_and_none_is_forwarded(
    paid_gateway, upstream: Upstream
) -> None:
    # A browser sends one cookie per matching path, in one header or (HTTP/2
    # through a proxy) several: each is a candidate, none reaches the upstream.
    paid = await paid_gateway(Tracker(), FakeBroadcaster())
    other = token_for(paid, "/archive/pages/2")
    token = token_for(paid, "/archive/pages/1")
    for headers in (
        f"Cookie: farebox_token={other}; x=1; farebox_token={token}\r\n",
        f"Cookie: farebox_token={other}\r\nCookie: x=1;farebox_token={token}\r\n",
    ):
        status, body = await raw_request(paid.base, "/archive/pages/1", headers=headers)
        assert status == 200, body
        forwarded = upstream.seen[-1].headers.get("Cookie", "")
        assert token not in forwarded and other not in forwarded
        assert "x=1" in forwarded


# --- 6. header totals -----------------------------------------------------------------


@dataclass
class Served:
    base: str
    port: int


@pytest.fixture
async def served(tmp_path: Path, upstream: Upstream) -> AsyncIterator[Served]:
    """`farebox serve` as admins run it, over FREE_POLICY."""
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(FREE_POLICY.format(upstream=upstream.url))
    key_file = tmp_path / "server.key"
    keys.generate(key_file)
    async with serve(
        "--policies", str(folder), "--key-file", str(key_file), "--port", "0", "--no-watch"
    ) as running:  # fmt: skip
        yield Served(running.base, running.port)


async def send_raw(port: int, message: bytes) -> tuple[int, bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(message)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def many_fields(count: int, size: int) -> bytes:
    return b"".join(b"X-Fill-%d: %s\r\n" % (n, b"a" * size) for n in range(count))


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/doc"),
        ("GET", "/healthz"),
        ("GET", "/.well-known/jwks.json"),
        ("POST", "/.well-known/farebox/pay"),
        ("GET", "/.well-known/farebox/auth"),
    ],
)
async def test_request_headers_over_the_total_get_431_on_every_path(
    served: Served, upstream: Upstream, method: str, target: str
) -> None:
    # 120 fields of 64 KB (each within the per-field limit): about 8 MiB.
    message = (
        f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        "Connection: close\r\n".encode()
        + many_fields(120, 64_000)
        + b"\r\n"
    )
    status, head, body = await send_raw(served.port, message)
    assert status == 431, head
    assert b"content-type: application/problem+json" in head.lower()
    assert b"\r\nserver: farebox\r\n" in head.lower()
    assert json.loads(body)["reason"] == "headers-too-large"
    assert upstream.seen == []


async def test_request_headers_at_the_nginx_bound_pass_just_over_it_do_not(
    served: Served, upstream: Upstream
) -> None:
    # The bound is nginx's template's: 4 buffers of 64k. (Fields of 8000
    # bytes: the test upstream, aiohttp, takes no longer ones.)
    from gateway.edge.protocol import MAX_HEADERS_TOTAL

    assert MAX_HEADERS_TOTAL == 256 * 1024
    start = b"GET /doc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    status, head, _ = await send_raw(served.port, start + many_fields(30, 8000) + b"\r\n")
    assert status == 200, head
    assert len(upstream.seen) == 1
    status, head, body = await send_raw(served.port, start + many_fields(34, 8000) + b"\r\n")
    assert status == 431 and json.loads(body)["reason"] == "headers-too-large"
    assert len(upstream.seen) == 1


# --- 11. shared caches ----------------------------------------------------------------

CACHE_POLICY = """\
services:
  s:
    upstream: {upstream}
    tabs: {{top_up: 1000, lasts: 1d}}
    routes:
      - path: /paid/*
        methods: [GET, POST]
        price: 25
        grant: {{lasts: 1h, covers: resource}}
      - path: /metered/*
        price: 10
        meter: {{per: request}}
      - path: /free/**
        price: free
"""
# What an upstream that thinks itself public says about caching.
PUBLIC = {
    "Cache-Control": "public, max-age=3600, s-maxage=600",
    "X-Accel-Expires": "3600",
    "CDN-Cache-Control": "max-age=600",
    "Surrogate-Control": "max-age=600",
    "Vary": "Accept-Encoding",
}


def cacheable_app(calls: list[str]) -> web.Application:
    async def any_request(request: web.Request) -> web.Response:
        await request.read()
        calls.append(f"{request.method} {request.path}")
        return web.Response(text=f"body of {request.path}", headers=PUBLIC)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_request)
    return app


@dataclass
class Shop:
    base: str
    tracker: Tracker
    calls: list[str]


@pytest.fixture
async def shop(gateway: GatewayFactory, tmp_path: Path) -> AsyncIterator[Shop]:
    calls: list[str] = []
    runner = web.AppRunner(cacheable_app(calls), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream = f"http://127.0.0.1:{runner.addresses[0][1]}"
    tracker, store = Tracker(), MemoryStore()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    cashier = Cashier(
        PAID_SERVER, tracker=tracker, broadcaster=FakeBroadcaster(), store=store, tokens=tokens
    )  # type: ignore[arg-type]
    base = await gateway(
        CACHE_POLICY.format(upstream=upstream),
        server_key=PAID_SERVER.public_key().hex(),
        tokens=tokens,
        cashier=cashier,
        cookie_secure=False,
        store=store,
        revocations=Revocations(store),
    )
    yield Shop(base, tracker, calls)
    await runner.cleanup()


async def fetch(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", data: bytes | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, data=data) as r,
    ):
        return r.status, r.headers.copy(), await r.read()


def assert_private(headers: CIMultiDict[str], body: bytes) -> None:
    assert headers.getall("Cache-Control") == ["private, max-age=3600"], body
    for name in ("X-Accel-Expires", "CDN-Cache-Control", "Surrogate-Control"):
        assert name not in headers
    assert [v.strip() for v in headers["Vary"].split(",")] == [
        "Accept-Encoding",
        "x-bsv-auth-request-id",
        "Authorization",
        "Cookie",
    ]


async def test_paid_and_metered_answers_are_private_free_ones_keep_their_caching(
    shop: Shop,
) -> None:
    # Bought with this request (a token and cookie go back), then by token.
    status, headers, body = await fetch(f"{shop.base}/paid/a", payment(shop.tracker, 25))
    assert status == 200 and "Set-Cookie" in headers, body
    assert_private(headers, body)
    bearer = {"Authorization": f"Bearer {headers['X-Farebox-Token']}"}
    status, headers, body = await fetch(f"{shop.base}/paid/a", bearer)
    assert status == 200 and body == b"body of /paid/a"
    assert_private(headers, body)
    # A body goes upstream through the other client (ClientSession): the same.
    status, headers, body = await fetch(
        f"{shop.base}/paid/b", payment(shop.tracker, 25), "POST", b"form"
    )
    assert status == 200, body
    assert_private(headers, body)

    # Metered: drawn from a tab, opened by this request and then by its token.
    status, headers, body = await fetch(f"{shop.base}/metered/a", payment(shop.tracker, 1000))
    assert status == 200, body
    assert_private(headers, body)
    tab = {"Authorization": f"Bearer {headers['X-Farebox-Token']}"}
    status, headers, body = await fetch(f"{shop.base}/metered/a", tab)
    assert status == 200, body
    assert_private(headers, body)

    # The 402s are never stored, as JSON or as a page.
    for url in (f"{shop.base}/paid/a", f"{shop.base}/metered/a"):
        for accept in ("application/json", "text/html"):
            status, headers, _ = await fetch(url, {"Accept": accept})
            assert status == 402
            assert headers.getall("Cache-Control") == ["no-store"]

    # A free answer is the upstream's to describe (varying on BRC-104 signing
    # too: a shared cache never hands it to a signed request).
    status, headers, _ = await fetch(f"{shop.base}/free/a")
    assert status == 200
    for name, value in PUBLIC.items():
        if name == "Vary":
            value += ", x-bsv-auth-request-id"
        assert headers.getall(name) == [value]


NGINX_CACHE = """\
proxy_cache_path {cache} levels=1 keys_zone=farebox_test:1m inactive=10m;
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass {gateway};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_cache farebox_test;
        add_header X-Cache $upstream_cache_status always;
    }}
}}
"""


async def test_a_shared_cache_in_front_never_serves_a_paid_body_unpaid(shop: Shop) -> None:
    """nginx's proxy_cache, obeying the answers' own caching headers as a CDN does."""
    cache = Path(tempfile.mkdtemp(prefix="farebox-cache-"))
    cache.chmod(0o777)  # nginx's workers run as nobody
    port = free_port()
    site = NGINX_CACHE.format(cache=cache, port=port, gateway=shop.base)
    try:
        async with running_nginx(site, (port,)):
            front = f"http://127.0.0.1:{port}"
            status, headers, body = await fetch(f"{front}/paid/a", payment(shop.tracker, 25))
            assert status == 200, body
            bearer = {"Authorization": f"Bearer {headers['X-Farebox-Token']}"}
            for _ in range(2):  # the answer with Set-Cookie is never stored; this one was
                status, headers, body = await fetch(f"{front}/paid/a", bearer)
                assert status == 200 and body == b"body of /paid/a"
            status, headers, body = await fetch(f"{front}/paid/a")
            assert status == 402, (headers.get("X-Cache"), body)
            assert b"body of /paid/a" not in body
            assert (await fetch(f"{front}/paid/a"))[0] == 402  # nor the 402 stored

            # Free answers are still the cache's to keep: the upstream is asked once.
            for _ in range(3):
                status, headers, body = await fetch(f"{front}/free/a")
                assert status == 200 and body == b"body of /free/a"
            assert headers["X-Cache"] == "HIT"
            assert shop.calls.count("GET /free/a") == 1
    finally:
        shutil.rmtree(cache, ignore_errors=True)

"""The gateway end to end: a real upstream, a real gateway, real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy.headers import _without_hop_by_hop, answer_headers, keep_private
from tests.conftest import FORGED, SERVER_KEY, GatewayFactory, Upstream, raw_request

POLICY = """\
services:
  svc:
    upstream: {upstream}
    routes:
      - path: /paid
        price: 100
        grant: {{lasts: 10m, covers: resource}}
      - path: /paid/**
        methods: "*"
        price: 100
      - path: /reports/{{year}}
        methods: [GET, HEAD]
        price: 40
        grant: {{lasts: 1h, covers: route}}
        description: Annual report
      - path: /ws
        price: free
      - path: /paidws
        price: 5
      - path: /**
        methods: "*"
        price: free
"""


async def start(gateway: GatewayFactory, upstream: Upstream, **kw: float) -> str:
    return await gateway(POLICY.format(upstream=upstream.url), **kw)


async def test_free_route_is_proxied_with_body_and_status(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    async with aiohttp.ClientSession() as http, http.get(f"{base}/free/item?q=1") as r:
        assert r.status == 200
        assert r.headers["X-Upstream"] == "yes"
        assert (await r.json())["path"] == "/free/item?q=1"
    assert upstream.paths == ["/free/item?q=1"]


async def test_priced_route_gets_402_challenge_and_never_reaches_upstream(
    gateway, upstream
) -> None:
    base = await start(gateway, upstream)
    async with aiohttp.ClientSession() as http, http.get(f"{base}/reports/2024") as r:
        assert r.status == 402
        assert r.headers["x-bsv-sats"] == "40"
        assert r.headers["x-bsv-server"] == SERVER_KEY
        assert "x-bsv-sats" in r.headers["Access-Control-Expose-Headers"]
        assert "x-bsv-server" in r.headers["Access-Control-Expose-Headers"]
        assert r.content_type == "application/problem+json"
        body = await r.json(content_type=None)
    assert upstream.seen == []
    assert body["status"] == 402 and body["reason"] == "payment-required"
    pay = body["payment"]
    assert pay["price"] == {"satoshis": 40}
    assert pay["service"] == "svc"
    assert pay["resource"] == {"method": "GET", "path": "/reports/2024"}
    assert pay["description"] == "Annual report"
    assert pay["grant"] == {
        "lasts_seconds": 3600,
        "covers": "route",
        "scope": "/reports/{year}",
        "methods": ["GET", "HEAD"],
    }
    assert {a["scheme"] for a in pay["accepts"]} == {"brc-121", "farebox"}
    assert pay["pay_url"] == "/.well-known/farebox/pay"
    assert pay["server"] == SERVER_KEY


async def test_head_on_priced_route_is_402_without_body(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    async with aiohttp.ClientSession() as http, http.head(f"{base}/reports/2024") as r:
        assert r.status == 402
        assert r.headers["x-bsv-sats"] == "40"
        assert await r.read() == b""
    assert upstream.seen == []


async def test_priced_post_with_body_is_not_forwarded(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    async with aiohttp.ClientSession() as http, http.post(f"{base}/paid/x", data=b"a" * 1000) as r:
        assert r.status == 402
    assert upstream.seen == []


# --- the attack list: refused, or matched exactly as forwarded --------------------


ATTACKS = [
    "/free/../paid",
    "/free/%2e%2e/paid",
    "/free/%2E%2E%2Fpaid",
    "//paid",
    "/paid;x=1",
    "/paid%00",
    "/./paid",
    "/paid/",
    "/PAID",
    "/Paid/x",
    "/free/..%2fpaid",
    "/free%5c..%5cpaid",
    "/free/.%2e/paid",
    "/%70aid",
    "/free/%252e%252e/paid",
    "/paid%20",
    "/paid%09",
    "/paid/..;/x",
    "/free\\..\\paid",
]


@pytest.mark.parametrize("target", ATTACKS)
async def test_attack_paths_are_refused_or_forwarded_as_matched(
    gateway, upstream, target: str
) -> None:
    base = await start(gateway, upstream)
    status, body = await raw_request(base, target)
    if status == 400:
        assert json.loads(body)["reason"]
        assert upstream.seen == []
        return
    if status == 402:
        assert upstream.seen == []  # matched as paid, nothing served
        return
    # Served free: the upstream must have been asked for exactly the path that
    # matched a free route, and that path must not be a paid one.
    assert status == 200, (status, body)
    [seen] = upstream.seen
    forwarded = seen.raw_path
    assert json.loads(body)["path"] == forwarded
    assert not (forwarded == "/paid" or forwarded.startswith("/paid/")), forwarded


@pytest.mark.parametrize(
    ("target", "outcome"),
    [
        ("/free/../paid", 402),
        ("/free/%2e%2e/paid", 402),
        ("/free/%2E%2E%2Fpaid", 400),
        ("//paid", 402),
        ("/paid;x=1", 400),
        ("/paid%00", 400),
        ("/./paid", 402),
        ("/paid/", 402),  # matched by /paid/**
        ("/PAID", 200),  # case-sensitive policy: a different (free) resource
        ("/%70aid", 402),
    ],
)
async def test_attack_list_outcomes(gateway, upstream, target: str, outcome: int) -> None:
    base = await start(gateway, upstream)
    status, _ = await raw_request(base, target)
    assert status == outcome
    if outcome == 200:
        assert upstream.paths == [target]


async def test_bad_target_is_problem_json(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    status, body = await raw_request(base, "/a%2fb")
    problem = json.loads(body)
    assert status == 400
    assert problem["reason"] == "encoded-slash"
    assert problem["type"].endswith("/encoded-slash")


# --- headers ---------------------------------------------------------------------


async def test_hop_by_hop_and_spoofable_headers(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    headers = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "Forwarded": "for=6.6.6.6",
        "X-Real-IP": "6.6.6.6",
        "X-Farebox-Grant": "forged",
        "Connection": "keep-alive, X-Drop-Me",
        "X-Drop-Me": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-Custom": "kept",
        "Cookie": "a=b",
    }
    async with aiohttp.ClientSession() as http, http.get(f"{base}/h?forge", headers=headers) as r:
        assert r.status == 200
        # Upstream's own hop-by-hop headers do not reach the client either,
        # nor its word on tokens, balances or prices (Farebox's alone).
        assert "X-Secret-Hop" not in r.headers
        assert not {k.lower() for k in FORGED} & {k.lower() for k in r.headers}
    seen = {k.lower(): v for k, v in upstream.seen[0].headers.items()}
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == base.removeprefix("http://")
    for gone in (
        "forwarded",
        "x-real-ip",
        "x-farebox-grant",
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-authorization",
    ):
        assert gone not in seen, gone
    assert seen["x-custom"] == "kept"
    assert seen["cookie"] == "a=b"
    # The upstream gets its own Host, not the gateway's.
    assert seen["host"] == upstream.url.removeprefix("http://")


async def test_every_connection_field_names_hop_by_hop_headers(gateway, upstream) -> None:
    """RFC 9110 7.6.1: a name listed in any Connection field is hop-by-hop,
    not only in the first one (the answer side read them all already)."""
    base = await start(gateway, upstream)
    raw = (
        "Connection: keep-alive\r\nConnection: X-Hop, X-Also\r\n"
        "X-Hop: secret\r\nX-Also: 1\r\nX-Custom: kept\r\n"
    )
    status, _ = await raw_request(base, "/h", headers=raw)
    assert status == 200
    seen = {k.lower() for k in upstream.seen[0].headers}
    assert "x-custom" in seen and not {"x-hop", "x-also"} & seen


async def test_preserve_host(gateway, upstream) -> None:
    policy = POLICY.format(upstream=upstream.url).replace(
        "    routes:", "    preserve_host: true\n    routes:", 1
    )
    base = await gateway(policy)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base}/h", headers={"Host": "records.example.gov"}) as r,
    ):
        assert r.status == 200
    assert upstream.seen[0].headers["Host"] == "records.example.gov"


async def test_head_passes_through(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    async with aiohttp.ClientSession() as http, http.head(f"{base}/big/5000") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "5000"
        assert await r.read() == b""


async def test_range_passes_through(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base}/ranged", headers={"Range": "bytes=10-19"}) as r,
    ):
        assert r.status == 206
        assert r.headers["Content-Range"] == "bytes 10-19/1024"
        assert await r.read() == bytes(range(10, 20))


async def test_request_body_streams_upstream(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    size = 64 * 1024 * 1024 + 123
    digest = hashlib.sha256()

    async def body():
        block = os.urandom(1 << 20)
        sent = 0
        while sent < size:
            chunk = block[: min(len(block), size - sent)]
            digest.update(chunk)
            sent += len(chunk)
            yield chunk

    async with aiohttp.ClientSession() as http, http.put(f"{base}/upload", data=body()) as r:
        assert r.status == 200
        answer = await r.json()
    assert answer == {
        "path": "/upload",
        "method": "PUT",
        "sha256": digest.hexdigest(),
        "size": size,
    }


async def test_large_response_streams_intact(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    size = 50 * 1024 * 1024 + 7
    async with aiohttp.ClientSession() as http, http.get(f"{base}/big/{size}") as r:
        assert r.status == 200
        assert int(r.headers["Content-Length"]) == size
        got = 0
        async for chunk in r.content.iter_chunked(1 << 20):
            got += len(chunk)
    assert got == size


# --- upstream failures -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_refused_upstream_is_502(gateway) -> None:
    base = await gateway(POLICY.format(upstream=f"http://127.0.0.1:{free_port()}"))
    async with aiohttp.ClientSession() as http, http.get(f"{base}/anything") as r:
        assert r.status == 502
        assert r.content_type == "application/problem+json"
        assert (await r.json(content_type=None))["reason"] == "upstream-unreachable"


async def test_slow_upstream_is_504(gateway, upstream) -> None:
    base = await start(gateway, upstream, read_timeout=0.5)
    async with aiohttp.ClientSession() as http, http.get(f"{base}/slow?s=3") as r:
        assert r.status == 504
        assert (await r.json(content_type=None))["reason"] == "upstream-timeout"


async def test_connect_timeout_is_504(gateway) -> None:
    # A listening socket whose backlog is full never completes the handshake.
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(0)
        fillers = []
        port = blackhole.getsockname()[1]
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        base = await gateway(
            POLICY.format(upstream=f"http://127.0.0.1:{port}"), connect_timeout=0.5
        )
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession() as http, http.get(f"{base}/x", timeout=timeout) as r:
            status = r.status
        for s in fillers:
            s.close()
    # Linux may complete the handshake into the backlog anyway, in which case
    # the upstream then never answers: a read timeout, also 504.
    assert status == 504


async def test_upstream_hanging_up_is_502(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    async with aiohttp.ClientSession() as http, http.get(f"{base}/hangup") as r:
        assert r.status == 502
        assert (await r.json(content_type=None))["reason"] == "upstream-failed"


async def test_upstream_breaking_mid_body_truncates_response(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(f"{base}/broken") as r:
                await r.read()
        # The gateway is still healthy afterwards.
        async with http.get(f"{base}/after") as r:
            assert r.status == 200


# --- websocket ---------------------------------------------------------------------


async def test_websocket_passes_through_on_free_route(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{base}/ws", protocols=("chat",)) as ws,
    ):
        assert ws.protocol == "chat"
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo:hello"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive(timeout=5)).data == b"\x03\x02\x01"
    seen = {k.lower(): v for k, v in upstream.seen[0].headers.items()}
    assert seen["x-forwarded-for"] == "127.0.0.1"


async def test_websocket_on_priced_route_gets_402(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{base}/paidws")
    assert info.value.status == 402
    assert upstream.seen == []


async def test_websocket_upstream_refusal_is_502(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{base}/not-a-websocket")
    assert info.value.status == 502


# --- unmatched and methods ---------------------------------------------------------


async def test_unmatched_and_wrong_method(gateway, upstream) -> None:
    policy = f"""\
    services:
      svc:
        upstream: {upstream.url}
        mount: /api
        routes:
          - path: /items
            methods: [GET]
            price: free
    """
    base = await gateway(policy)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/elsewhere") as r:
            assert r.status == 404
            assert (await r.json(content_type=None))["reason"] == "no-route"
        async with http.delete(f"{base}/api/items") as r:
            assert r.status == 405
            assert r.headers["Allow"] == "GET"
        async with http.get(f"{base}/api/items") as r:
            assert r.status == 200
            assert (await r.json())["path"] == "/items"  # mount replaced by upstream base
    assert upstream.paths == ["/items"]


async def test_concurrent_requests_share_the_pool(gateway, upstream) -> None:
    base = await start(gateway, upstream)
    async with aiohttp.ClientSession() as http:

        async def one(i: int) -> str:
            async with http.get(f"{base}/n/{i}") as r:
                return (await r.json())["path"]

        paths = await asyncio.gather(*(one(i) for i in range(200)))
    assert sorted(paths) == sorted(f"/n/{i}" for i in range(200))


async def test_client_hanging_up_mid_download_is_quiet_and_harmless(
    gateway, upstream, caplog
) -> None:
    base = await start(gateway, upstream)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/big/{1 << 30}") as r:
            await r.content.readexactly(1 << 20)
        # Leaving the block closes the connection with ~1 GiB unread.
        await asyncio.sleep(0.3)
        async with http.get(f"{base}/after") as r:
            assert r.status == 200
    assert not [rec for rec in caplog.records if rec.levelname in ("ERROR", "CRITICAL")]


# --- the answer headers kept per upstream header list ---------------------------------

_NAMES = st.sampled_from(
    ["Content-Type", "Cache-Control", "cache-control", "Vary", "Connection", "X-Accel-Expires",
     "Set-Cookie", "Server", "X-Farebox-Token", "ETag", "Surrogate-Control", "X-Custom",
     "Keep-Alive", "payment-required", "X-Request-Id", "CDN-Cache-Control"]
)  # fmt: skip
_VALUES = st.sampled_from(
    ["public, max-age=60", "no-store", "private", "Accept", "X-Custom, close", "keep-alive",
     "farebox_token=forged", "a=b", "1", "*", "s-maxage=5", ""]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=10), st.booleans())
def test_kept_answer_headers_are_what_the_filters_make(
    pairs: list[tuple[str, str]], priced: bool
) -> None:
    """answer_headers remembers its work per header list: each call gives
    what _without_hop_by_hop (and keep_private on priced routes) would, and
    a caller's changes to one answer's headers never reach the next."""
    expected = _without_hop_by_hop(pairs)
    if priced:
        keep_private(expected)
    for _ in range(2):
        got = answer_headers(list(pairs), priced)
        assert list(got.items()) == list(expected.items())
        got["X-Added"] = "by this answer"
        got.popall("Vary", None)

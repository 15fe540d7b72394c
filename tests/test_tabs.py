"""Prepaid tabs: opening, topping up, metering per request, per MB and per unit.

A real gateway and a real metered upstream; payments are real signed
transactions (test tracker, recording broadcaster). The money rules under
test: a top-up is credited exactly once, a request never takes more than
the tab holds, and a request that failed or never reached its client costs
nothing (per MB: only what was delivered).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from bsv import PrivateKey

from gateway.payments.cashier import Cashier
from gateway.pipeline.credentials import Revocations
from gateway.pricing.tabs import tab_for_payment
from gateway.store.memory import MemoryStore
from gateway.tokens import KeyRing, Tokens
from tests.chainkit import Tracker, atomic_beef, pay
from tests.conftest import PAID_SERVER
from tests.test_paid_access import FakeBroadcaster

CLIENT = PrivateKey(0x7AB5)
MB = 1_000_000

POLICY = """\
services:
  util:
    upstream: {upstream}
    mount: /util
    tabs: {{top_up: 1000, lasts: 1d}}
    routes:
      - path: /calls/{{n}}
        price: 10
        meter: {{per: request}}
      - path: /meters/{{m}}/draw
        methods: [GET, POST]
        price: 150
        meter: {{per: unit, most: 5}}
      - path: /files/{{size}}
        price: 8
        meter: {{per: mb, most: 2}}
      - path: /fail
        price: 10
        meter: {{per: request}}
      - path: /slow
        price: 10
        meter: {{per: request}}
      - path: /page
        price: 25
      - path: /info
        price: free
"""


def metered_app(calls: list[str]) -> web.Application:
    async def call(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"n": request.match_info["n"]})

    async def draw(request: web.Request) -> web.Response:
        calls.append(request.path)
        headers = {}
        if "units" in request.query:
            headers["X-Usage-Units"] = request.query["units"]
        return web.json_response({"meter": request.match_info["m"]}, headers=headers)

    async def files(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        size = int(request.match_info["size"])
        chunked = request.query.get("chunked") == "1"
        response = web.StreamResponse()
        if not chunked:
            response.content_length = size
        await response.prepare(request)
        block = b"z" * 65536
        left = size
        try:
            while left > 0:
                await response.write(block[: min(left, len(block))])
                left -= len(block)
                if request.query.get("pace"):
                    await asyncio.sleep(0.01)
            await response.write_eof()
        except ConnectionError:
            pass
        return response

    async def fail(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(status=500, text="meter database down")

    async def slow(request: web.Request) -> web.Response:
        calls.append(request.path)
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text="late")

    async def page(request: web.Request) -> web.Response:
        calls.append(f"{request.path} auth={request.headers.get('Authorization', '')}")
        return web.Response(text="a page")

    app = web.Application()
    app.router.add_get("/calls/{n}", call)
    app.router.add_route("*", "/meters/{m}/draw", draw)
    app.router.add_get("/files/{size}", files)
    app.router.add_get("/fail", fail)
    app.router.add_get("/slow", slow)
    app.router.add_get("/page", page)
    app.router.add_get("/info", page)
    return app


class Setup:
    def __init__(
        self, base: str, tracker: Tracker, broadcaster: FakeBroadcaster, store: MemoryStore
    ) -> None:
        self.base = base
        self.tracker = tracker
        self.broadcaster = broadcaster
        self.store = store
        self.calls: list[str] = []

    def payment(self, sats: int, *, time_ms: int | None = None) -> dict[str, str]:
        time_ms = int(time.time() * 1000) if time_ms is None else time_ms
        suffix = base64.b64encode(str(time_ms).encode()).decode()
        nonce = base64.b64encode(os.urandom(8)).decode()
        p = pay(PAID_SERVER.public_key(), CLIENT, sats, self.tracker, prefix=nonce, suffix=suffix)
        return {
            "x-bsv-beef": base64.b64encode(atomic_beef(p.tx)).decode(),
            "x-bsv-sender": CLIENT.public_key().hex(),
            "x-bsv-nonce": nonce,
            "x-bsv-time": str(time_ms),
            "x-bsv-vout": "0",
            "_txid": p.tx.txid(),
        }

    async def open_tab(self, sats: int = 1000) -> tuple[str, str]:
        """Pay a top-up on a metered request; (tab token, tab id)."""
        status, headers, body = await get(f"{self.base}/util/calls/0", self.payment(sats))
        assert status == 200, body
        return headers["X-Farebox-Token"], headers["X-Farebox-Tab"]


async def get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    sent = {k: v for k, v in (headers or {}).items() if not k.startswith("_")}
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=sent) as r:
        return r.status, dict(r.headers), await r.read()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def metered(gateway, tmp_path: Path) -> AsyncIterator[Setup]:
    calls: list[str] = []
    runner = web.AppRunner(metered_app(calls), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream = f"http://127.0.0.1:{runner.addresses[0][1]}"
    tracker, broadcaster, store = Tracker(), FakeBroadcaster(), MemoryStore()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    cashier = Cashier(
        PAID_SERVER, tracker=tracker, broadcaster=broadcaster, store=store, tokens=tokens
    )  # type: ignore[arg-type]
    base = await gateway(
        POLICY.format(upstream=upstream),
        server_key=PAID_SERVER.public_key().hex(),
        tokens=tokens,
        cashier=cashier,
        cookie_secure=False,
        store=store,
        revocations=Revocations(store),
        read_timeout=0.5,
    )
    setup = Setup(base, tracker, broadcaster, store)
    setup.calls = calls
    yield setup
    await runner.cleanup()


async def balance(setup: Setup, tab: str) -> int:
    found = await setup.store.balance(tab)
    assert found is not None
    return found


# --- opening and topping up ---------------------------------------------------------


async def test_unpaid_metered_request_asks_for_a_top_up(metered: Setup) -> None:
    status, headers, body = await get(f"{metered.base}/util/meters/7/draw")
    assert status == 402
    assert headers["x-bsv-sats"] == "1000"
    problem = json.loads(body)
    payment = problem["payment"]
    assert problem["reason"] == "payment-required" and "tab" in problem["detail"]
    assert payment["grant"]["covers"] == "tab" and payment["grant"]["scope"] == "/util/**"
    assert payment["grant"]["lasts_seconds"] == 86400
    assert payment["tab"] == {
        "per": "unit",
        "unit_price": {"satoshis": "150"},
        "most_units": "5",
        "most_satoshis": "750",
        "top_up_satoshis": 1000,
        "balance_url": "/.well-known/farebox/tab",
        "units_header": "X-Usage-Units",
    }
    assert metered.calls == []


async def test_a_payment_opens_a_tab_and_each_call_is_charged(metered: Setup) -> None:
    pay_headers = metered.payment(1200)  # more than the smallest top-up: all credited
    status, headers, body = await get(f"{metered.base}/util/calls/1", pay_headers)
    assert status == 200, body
    tab = headers["X-Farebox-Tab"]
    assert tab == tab_for_payment(pay_headers["_txid"])
    assert (headers["X-Farebox-Charge"], headers["X-Farebox-Balance"]) == ("10", "1190")
    assert "farebox_token" in headers["Set-Cookie"] and "Path=/util" in headers["Set-Cookie"]
    token = headers["X-Farebox-Token"]
    for n in range(2, 7):
        status, headers, _ = await get(f"{metered.base}/util/calls/{n}", bearer(token))
        assert status == 200 and headers["X-Farebox-Tab"] == tab
    assert headers["X-Farebox-Balance"] == "1140"
    assert await balance(metered, tab) == 1_140_000  # msat
    assert len(metered.broadcaster.seen) == 1

    # The balance endpoint agrees; without a tab token it says what is needed.
    status, _, body = await get(f"{metered.base}/.well-known/farebox/tab", bearer(token))
    assert status == 200
    assert json.loads(body)["balance_satoshis"] == "1140" and json.loads(body)["tab"] == tab
    status, _, body = await get(f"{metered.base}/.well-known/farebox/tab")
    assert status == 401 and json.loads(body)["reason"] == "no-tab"


async def test_a_top_up_is_credited_once_however_often_it_is_sent(metered: Setup) -> None:
    token, tab = await metered.open_tab(1000)  # 990 left after the first call
    top_up = metered.payment(2000)
    url = f"{metered.base}/util/calls/9"
    results = await asyncio.gather(*(get(url, {**top_up, **bearer(token)}) for _ in range(30)))
    assert {r[0] for r in results} == {200}
    assert {r[1]["X-Farebox-Tab"] for r in results} == {tab}  # the same tab, topped up
    # 30 calls charged, one top-up of 2000 credited.
    assert await balance(metered, tab) == (990 + 2000 - 30 * 10) * 1000
    # And sent again later, through the pay endpoint too: still once.
    body = {
        "beef": top_up["x-bsv-beef"],
        "sender": top_up["x-bsv-sender"],
        "nonce": top_up["x-bsv-nonce"],
        "time": top_up["x-bsv-time"],
        "vout": 0,
        "url": "/util/calls/9",
        "tab": token,
    }
    pay_url = f"{metered.base}/.well-known/farebox/pay"
    async with aiohttp.ClientSession() as http, http.post(pay_url, json=body) as r:
        answer = await r.json()
        assert r.status == 200 and answer["repeated"] is True
    assert await balance(metered, tab) == (990 + 2000 - 300) * 1000


async def test_the_same_payment_cannot_top_up_two_tabs(metered: Setup) -> None:
    token, tab = await metered.open_tab()
    payment = metered.payment(1000)
    status, headers, _ = await get(f"{metered.base}/util/calls/1", payment)  # a new tab
    assert status == 200 and headers["X-Farebox-Tab"] != tab
    status, _, body = await get(f"{metered.base}/util/calls/1", {**payment, **bearer(token)})
    assert status == 402 and json.loads(body)["reason"] == "payment-reused"
    assert await balance(metered, tab) == 990_000


async def test_pay_endpoint_opens_and_tops_up_tabs(metered: Setup) -> None:
    def body(payment: dict[str, str], **extra: object) -> dict[str, object]:
        return {
            "beef": payment["x-bsv-beef"],
            "sender": payment["x-bsv-sender"],
            "nonce": payment["x-bsv-nonce"],
            "time": payment["x-bsv-time"],
            "vout": 0,
            "url": "/util/meters/1/draw",
            "method": "POST",
            **extra,
        }

    pay_url = f"{metered.base}/.well-known/farebox/pay"
    async with aiohttp.ClientSession() as http:
        async with http.post(pay_url, json=body(metered.payment(1000))) as r:
            opened = await r.json()
            assert r.status == 200, opened
        assert opened["grant"]["covers"] == "tab" and opened["tab"]["balance_satoshis"] == "1000"
        async with http.post(pay_url, json=body(metered.payment(1500), tab=opened["token"])) as r:
            topped = await r.json()
            assert r.status == 200, topped
        assert topped["tab"] == {"id": opened["tab"]["id"], "balance_satoshis": "2500"}
        async with http.post(pay_url, json=body(metered.payment(1000), tab="not-a-token")) as r:
            assert r.status == 400 and (await r.json())["reason"] == "bad-tab"
        async with http.post(pay_url, json=body(metered.payment(999))) as r:
            assert r.status == 402 and (await r.json())["reason"] == "underpaid"


async def test_tabs_and_grants_do_not_stand_in_for_each_other(metered: Setup) -> None:
    token, _ = await metered.open_tab()
    status, _, _ = await get(f"{metered.base}/util/page", bearer(token))
    assert status == 402  # a tab token is no grant for a priced resource
    status, headers, _ = await get(f"{metered.base}/util/page", metered.payment(25))
    assert status == 200
    status, _, body = await get(f"{metered.base}/util/calls/1", bearer(headers["X-Farebox-Token"]))
    assert status == 402 and json.loads(body)["reason"] == "payment-required"


async def test_tab_tokens_never_reach_the_upstream(metered: Setup) -> None:
    token, _ = await metered.open_tab()
    status, _, _ = await get(f"{metered.base}/util/info", bearer(token))
    assert status == 200 and metered.calls[-1] == "/info auth="
    # Someone else's bearer token on a free route is the upstream's business.
    status, _, _ = await get(f"{metered.base}/util/info", bearer("their-api-token"))
    assert metered.calls[-1] == "/info auth=Bearer their-api-token"


async def test_a_revoked_tab_cannot_be_topped_up(metered: Setup) -> None:
    token, tab = await metered.open_tab()
    await metered.store.revoke(tab, int(time.time()) + 3600)
    payment = metered.payment(1000)
    body = {
        "beef": payment["x-bsv-beef"],
        "sender": payment["x-bsv-sender"],
        "nonce": payment["x-bsv-nonce"],
        "time": payment["x-bsv-time"],
        "vout": 0,
        "url": "/util/calls/1",
        "tab": token,
    }
    pay_url = f"{metered.base}/.well-known/farebox/pay"
    async with aiohttp.ClientSession() as http, http.post(pay_url, json=body) as r:
        assert r.status == 400 and (await r.json())["reason"] == "grant-revoked"
    assert await balance(metered, tab) == 990_000
    assert len(metered.broadcaster.seen) == 1  # the refused top-up was never broadcast


async def test_a_revoked_tab_is_refused(metered: Setup) -> None:
    token, tab = await metered.open_tab()
    await metered.store.revoke(tab, int(time.time()) + 3600)
    await asyncio.sleep(1.1)  # revocation answers are cached for a second
    status, _, body = await get(f"{metered.base}/util/calls/1", bearer(token))
    assert status == 402 and json.loads(body)["reason"] == "grant-revoked"


async def test_a_revoked_tab_token_first_does_not_hide_a_valid_tab_s_balance(
    metered: Setup,
) -> None:
    # As admission passes a revoked grant over for the next token, so does
    # the balance endpoint: a revoked tab's token first (a stale cookie or
    # header) does not turn the valid one after it into a 401.
    old, old_tab = await metered.open_tab()
    token, tab = await metered.open_tab()
    assert tab != old_tab
    await metered.store.revoke(old_tab, int(time.time()) + 3600)
    await asyncio.sleep(1.1)  # revocation answers are cached for a second
    headers = {**bearer(old), "Cookie": f"farebox_token={token}"}
    status, _, body = await get(f"{metered.base}/.well-known/farebox/tab", headers)
    assert status == 200 and json.loads(body)["tab"] == tab
    status, _, body = await get(f"{metered.base}/.well-known/farebox/tab", bearer(old))
    assert status == 401 and json.loads(body)["reason"] == "no-tab"


# --- metering ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "charged"),
    [("3.5", "525"), ("0.001", "0.15"), ("9", "750"), ("junk", "0"), ("-2", "0"), (None, "0")],
)
async def test_per_unit_charges_what_the_upstream_reports(
    metered: Setup, units: str | None, charged: str
) -> None:
    token, tab = await metered.open_tab(2000)
    query = "" if units is None else f"?units={units}"
    status, headers, _ = await get(
        f"{metered.base}/util/meters/4/draw{query}", bearer(token), method="POST"
    )
    assert status == 200
    assert headers["X-Farebox-Charge"] == charged  # at most `most` (5) units
    expected = 1990 * 1000 - round(float(charged) * 1000)
    assert await balance(metered, tab) == expected
    assert headers["X-Farebox-Balance"] == f"{expected / 1000:g}"


async def test_per_mb_charges_the_bytes_delivered(metered: Setup) -> None:
    token, tab = await metered.open_tab()
    status, headers, body = await get(f"{metered.base}/util/files/{MB * 3 // 2}", bearer(token))
    assert status == 200 and len(body) == MB * 3 // 2
    assert headers["X-Farebox-Charge"] == "12"  # 1.5 MB at 8 satoshis
    assert await balance(metered, tab) == (990 - 12) * 1000
    # Sent through small buffers, so the connection is not kept for others.
    assert headers["Connection"].lower() == "close"

    # Length unknown in advance: the most it may cost is shown, bytes are settled.
    status, headers, body = await get(f"{metered.base}/util/files/250000?chunked=1", bearer(token))
    assert status == 200 and len(body) == 250_000
    assert "X-Farebox-Charge" not in headers and headers["X-Farebox-Charge-Limit"] == "16"
    assert await balance(metered, tab) == (978 - 2) * 1000


async def test_per_mb_head_costs_nothing_and_says_so(metered: Setup) -> None:
    token, tab = await metered.open_tab()
    status, headers, _ = await get(f"{metered.base}/util/files/{MB}", bearer(token), method="HEAD")
    assert status == 200 and headers["X-Farebox-Charge"] == "0"
    assert headers["X-Farebox-Balance"] == "990"
    assert await balance(metered, tab) == 990_000


async def test_per_mb_cuts_an_answer_longer_than_its_most(metered: Setup) -> None:
    token, tab = await metered.open_tab()
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(f"{metered.base}/util/files/{3 * MB}", bearer(token))
    await asyncio.sleep(0.1)
    assert await balance(metered, tab) == (990 - 16) * 1000  # the 2 MB most, no more


async def test_per_mb_client_leaving_pays_only_what_was_delivered(metered: Setup) -> None:
    token, tab = await metered.open_tab()
    size = 2 * MB
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{metered.base}/util/files/{size}?chunked=1&pace=1", headers=bearer(token)) as r,
    ):
        assert r.status == 200
        await r.content.readexactly(100_000)
        # Leaving the block closes the connection mid-body.
    await asyncio.sleep(0.6)
    left = await balance(metered, tab)
    charged = 990_000 - left
    assert 0 < charged < 16_000  # some bytes went out, far from all of them


async def test_per_mb_hang_up_pays_for_what_the_connection_took_not_the_buffers(
    metered: Setup,
) -> None:
    # A fast upstream fills every buffer between the meter and the client;
    # the client reads 0.2 MB, waits, and hangs up. It pays for what reached
    # its machine (what it read, plus its own small receive buffer) and at most
    # the gateway's small send buffers more (HANG_UP_BOUND), never the rest.
    from gateway.proxy.forward import HANG_UP_BOUND

    token, tab = await metered.open_tab()
    host, port = metered.base.removeprefix("http://").split(":")

    def slow_reader() -> None:
        # A blocking socket: nothing buffers on the client but its kernel.
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            sock.connect((host, int(port)))
            sock.sendall(
                f"GET /util/files/{2 * MB} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
            got = b""
            while b"\r\n\r\n" not in got:
                got += sock.recv(4096)
            body = len(got.partition(b"\r\n\r\n")[2])
            while body < 200_000:
                body += len(sock.recv(min(65536, 200_000 - body)))
            time.sleep(0.5)  # everything that fits is in the buffers now
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    await asyncio.get_running_loop().run_in_executor(None, slow_reader)  # closes with RST
    await asyncio.sleep(0.6)
    charged = 990_000 - await balance(metered, tab)  # msat at 8 sat per MB
    reached = 200_000 + 2 * 32 * 1024  # what it read, and its socket's receive buffer
    assert charged <= math.ceil((reached + HANG_UP_BOUND) * 8_000 / MB), charged
    assert charged >= 200_000 * 8_000 // MB


async def test_failures_cost_nothing(metered: Setup) -> None:
    token, tab = await metered.open_tab()
    status, headers, _ = await get(f"{metered.base}/util/fail", bearer(token))
    assert status == 500 and headers["X-Farebox-Charge"] == "0"
    status, _, _ = await get(f"{metered.base}/util/slow?s=2", bearer(token))  # read timeout 0.5 s
    assert status == 504
    assert await balance(metered, tab) == 990_000


async def test_unreachable_upstream_costs_nothing(gateway, tmp_path: Path) -> None:
    tracker, broadcaster, store = Tracker(), FakeBroadcaster(), MemoryStore()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    cashier = Cashier(
        PAID_SERVER, tracker=tracker, broadcaster=broadcaster, store=store, tokens=tokens
    )  # type: ignore[arg-type]
    closed = "http://127.0.0.1:9"  # discard port: nothing listens
    base = await gateway(
        POLICY.format(upstream=closed),
        server_key=PAID_SERVER.public_key().hex(),
        tokens=tokens,
        cashier=cashier,
        store=store,
    )
    setup = Setup(base, tracker, broadcaster, store)
    status, headers, _ = await get(f"{base}/util/calls/1", setup.payment(1000))
    assert status == 502 and "X-Farebox-Token" in headers  # the tab is open: keep its token
    assert await store.balance(headers["X-Farebox-Tab"]) == 1_000_000


async def test_a_client_that_hangs_up_waiting_pays_nothing(metered: Setup) -> None:
    token, tab = await metered.open_tab()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(asyncio.TimeoutError):
            await http.get(
                f"{metered.base}/util/slow?s=0.4",
                headers=bearer(token),
                timeout=aiohttp.ClientTimeout(total=0.1),
            )
    await asyncio.sleep(0.8)
    assert metered.calls[-1] == "/slow"  # the upstream did answer, to nobody
    assert await balance(metered, tab) == 990_000


async def test_an_exhausted_tab_asks_for_a_top_up(metered: Setup) -> None:
    token, tab = await metered.open_tab()
    await metered.store.reserve(tab, 900_000, "someone-else", 60)  # 90 left
    status, headers, body = await get(f"{metered.base}/util/meters/1/draw?units=1", bearer(token))
    assert status == 402 and headers["x-bsv-sats"] == "1000"
    problem = json.loads(body)
    assert (
        problem["reason"] == "tab-exhausted"
        and problem["payment"]["tab"]["balance_satoshis"] == "90"
    )
    assert "750" in problem["detail"]  # what the request may cost
    # Cheaper requests still fit.
    assert (await get(f"{metered.base}/util/calls/2", bearer(token)))[0] == 200


async def test_concurrent_requests_never_overspend(metered: Setup) -> None:
    """1,000 requests at once against a balance worth exactly 100 of them."""
    token, tab = await metered.open_tab(1010)  # 1000 left after the opening call
    metered.calls.clear()
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(n: int) -> int:
            async with http.get(f"{metered.base}/util/calls/{n}", headers=bearer(token)) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one(n) for n in range(1000)))
    assert statuses.count(200) == 100 and statuses.count(402) == 900
    assert len(metered.calls) == 100  # the refused ones never reached the upstream
    assert await balance(metered, tab) == 0


# --- policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "message"),
    [
        (
            "routes: [{path: /a, price: 5, meter: {per: request}}]",
            "metered routes are paid from tabs: add `tabs: {top_up: N}`",
        ),
        (
            "tabs: {top_up: 100}\n    routes: [{path: /a, price: free, meter: {per: unit}}]",
            "a metered route needs a price per unit, not 'free'",
        ),
        (
            "tabs: {top_up: 100}\n    routes: [{path: /a, price: 5, meter: {per: request, most: 3}}]",
            "a per-request meter charges one unit per request: drop `most`",
        ),
        (
            "tabs: {top_up: 100}\n    routes: [{path: /a, price: 30, meter: {per: unit, most: 4}}]",
            "tabs.top_up (100) is less than one request on /a may cost (120 satoshis)",
        ),
        (
            "tabs: {top_up: 100}\n    routes: [{path: /a, price: 5, grant: {lasts: 1h}, meter: {per: mb}}]",
            "a metered route is charged per use from a tab: drop `grant`",
        ),
        (
            "tabs: {top_up: 100}\n    routes: [{path: /a, price: 5, meter: {per: unit, units_header: X-Farebox-Units}}]",
            "is not a header name the upstream can send",
        ),
        (
            "tabs: {top_up: 100}\n    routes: [{path: /a, price: 5, meter: {per: hour}}]",
            "per",
        ),
    ],
)
def test_policy_errors_for_meters_and_tabs(tmp_path: Path, service: str, message: str) -> None:
    from gateway.policy import PolicyError, load_policy

    (tmp_path / "p.yaml").write_text(
        f"services:\n  s:\n    upstream: http://127.0.0.1:1\n    {service}\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert message in str(info.value)
    assert "p.yaml:" in str(info.value)


# --- PerRequest: Metering's per-request rule, worked out once ----------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from multidict import CIMultiDict  # noqa: E402

from gateway.policy.schema import Meter  # noqa: E402
from gateway.pricing.tabs import Metering, PerRequest, most_msat  # noqa: E402


@given(
    unit=st.integers(0, 10**9),
    balance=st.integers(0, 10**12),
    status=st.sampled_from([None, 100, 200, 204, 206, 304, 399, 400, 404, 500, 502]),
    delivered=st.booleans(),
    bodiless=st.booleans(),
    length=st.sampled_from([None, "0", "1024", "junk"]),
)
def test_per_request_charges_and_tells_as_metering_does(
    unit: int,
    balance: int,
    status: int | None,
    delivered: bool,
    bodiless: bool,
    length: str | None,
) -> None:
    meter = Meter(per="request")
    held = most_msat(meter, unit)
    plain = Metering(meter, unit, held, balance, bodiless=bodiless)
    good, owes = PerRequest.worked_out(unit, held)
    fast = PerRequest(meter, unit, held, balance, bodiless=bodiless, good=good, owes=owes)
    headers = CIMultiDict() if length is None else CIMultiDict({"Content-Length": length})
    for metering in (plain, fast):
        if status is not None:
            assert metering.allow(100) == 100
        if delivered:
            metering.end()
    if status is not None:
        assert fast.owed(status, headers) == plain.owed(status, headers)
    assert fast.charge() == plain.charge()

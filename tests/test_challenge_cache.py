"""The JSON 402 kept for a second (challenge/respond.py `_Rendered`): the same
request gets the same answer, and nothing that changes the answer is missed:
the price (policy reload, rate move), the URL, the method, a refusal, a
page for a browser."""

from __future__ import annotations

import base64
import json
import textwrap
from decimal import Decimal
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.edge.protocol import ProblemServer
from gateway.policy.reload import PolicyHolder
from gateway.pricing.rates import Rate
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import assemble_gateway
from gateway.services import Services
from gateway.store.memory import MemoryStore
from tests.conftest import SERVER_KEY

POLICY = """\
services:
  archive:
    upstream: {upstream}
    routes:
      - path: /pages/{{n}}
        price: {price}
        grant: {{lasts: 1h}}
      - path: /fares/{{n}}
        price: {{usd_cents: 2}}
        grant: {{lasts: 1h}}
"""


class MovingRate:
    """A rate feed whose rate the test moves."""

    def __init__(self, per_bsv: str) -> None:
        self.per_bsv = Decimal(per_bsv)

    async def rate(self, currency: str) -> Rate:
        return Rate(currency, self.per_bsv, 1_700_000_000)


async def _get(
    http: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[int, CIMultiDict[str], dict]:
    async with http.get(url, headers=headers) as r:
        body = await r.read()
        return r.status, CIMultiDict(r.headers), json.loads(body) if body.startswith(b"{") else {}


def _x402(headers: CIMultiDict[str]) -> dict:
    return json.loads(base64.b64decode(headers["PAYMENT-REQUIRED"]))


async def _start(
    tmp_path: Path,
    policy: str,
    rates: MovingRate,
    holder: PolicyHolder | None = None,
    server_key: str = SERVER_KEY,
):
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    if holder is None:
        (folder / "p.yaml").write_text(textwrap.dedent(policy))
        holder = PolicyHolder.load(folder)
    proxy = Proxy(connect_timeout=2, read_timeout=5)
    await proxy.start()
    services = Services(holder, server_key, store=MemoryStore(), rates=rates)
    handler = assemble_gateway(services, proxy)
    runner = web.ServerRunner(ProblemServer(handler.handle, lane=handler.takes, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}", holder, folder, runner, proxy


async def test_a_kept_402_follows_every_change_of_what_it_says(tmp_path: Path, upstream) -> None:
    policy = POLICY.format(upstream=upstream.url, price=25)
    rates = MovingRate("40")
    base, holder, folder, runner, proxy = await _start(tmp_path, policy, rates)
    try:
        async with aiohttp.ClientSession() as http:
            # The same request twice: the same answer, each with its own request id.
            s1, h1, b1 = await _get(http, f"{base}/pages/1")
            s2, h2, b2 = await _get(http, f"{base}/pages/1")
            assert (s1, s2) == (402, 402) and b1 == b2 and b1["payment"]["price"]["satoshis"] == 25
            assert h1["PAYMENT-REQUIRED"] == h2["PAYMENT-REQUIRED"]
            assert h1["X-Request-Id"] != h2["X-Request-Id"]

            # Another URL, if only by its query: its own resource in x402's request.
            _, h3, b3 = await _get(http, f"{base}/pages/1?x=1")
            assert b3["payment"]["resource"]["path"] == "/pages/1"
            assert _x402(h3)["resource"]["url"].endswith("/pages/1?x=1")
            assert _x402(h1)["resource"]["url"].endswith("/pages/1")

            # A refused payment is told why, not handed the unpaid request's 402.
            _, _, refused = await _get(http, f"{base}/pages/1", **{"payment-signature": "x"})
            assert refused["reason"] != "payment-required"
            _, _, again = await _get(http, f"{base}/pages/1")
            assert again == b1

            # A browser gets its page, not the JSON kept for programs.
            async with http.get(f"{base}/pages/1", headers={"Accept": "text/html"}) as r:
                assert r.status == 402 and r.content_type == "text/html"

            # The policy changes what the route is called: the next 402 says so;
            # then its price: the next 402 asks the new one.
            changed = POLICY.format(upstream=upstream.url, price=25).replace(
                "grant: {lasts: 1h}\n", "grant: {lasts: 1h}\n        description: Page scans\n", 1
            )
            (folder / "p.yaml").write_text(changed)
            assert holder.reload()
            _, _, named = await _get(http, f"{base}/pages/1")
            assert named["payment"]["description"] == "Page scans"
            (folder / "p.yaml").write_text(POLICY.format(upstream=upstream.url, price=40))
            assert holder.reload()
            _, h4, b4 = await _get(http, f"{base}/pages/1")
            assert b4["payment"]["price"]["satoshis"] == 40 and h4["x-bsv-sats"] == "40"

            # The rate moves: a fiat price follows at once.
            _, _, f1 = await _get(http, f"{base}/fares/1")
            rates.per_bsv = Decimal("80")
            _, _, f2 = await _get(http, f"{base}/fares/1")
            assert f1["payment"]["price"]["satoshis"] == 2 * f2["payment"]["price"]["satoshis"]

            # HEAD and GET are answered as themselves.
            async with http.head(f"{base}/pages/1") as r:
                assert r.status == 402 and await r.read() == b""
        assert upstream.seen == []  # no unpaid request reached the upstream
    finally:
        await runner.cleanup()
        await proxy.close()


async def test_gateways_in_one_process_each_ask_to_be_paid_to_their_own_key(
    tmp_path: Path, upstream
) -> None:
    """Two gateways on one policy, with different keys: a 402 kept by one is
    never the other's (the key and the x402 network are part of what is kept)."""
    policy = POLICY.format(upstream=upstream.url, price=25)
    other = "03" + "22" * 32
    one = await _start(tmp_path, policy, MovingRate("40"))
    two = await _start(tmp_path, policy, MovingRate("40"), holder=one[1], server_key=other)
    try:
        async with aiohttp.ClientSession() as http:
            # One name for both (as behind one balancer): the same origin.
            _, h1, _ = await _get(http, f"{one[0]}/pages/9", Host="archive.example")
            _, h2, b2 = await _get(http, f"{two[0]}/pages/9", Host="archive.example")
        assert h1["x-bsv-server"] == SERVER_KEY
        assert h2["x-bsv-server"] == other and b2["payment"]["server"] == other
        assert _x402(h2)["accepts"][0]["payTo"] == other
    finally:
        for started in (one, two):
            await started[3].cleanup()
            await started[4].close()

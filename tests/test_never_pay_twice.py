"""Farebox's own client never pays twice (issue 13), on real servers.

A real devnet, a real gateway that checks and broadcasts real signed
transactions, and between the client and the gateway a small real proxy
that loses answers the way networks and front proxies do: the gateway takes
the payment, the client hears a 502, a bare 402, a reset, an answer without
the grant. The rule under test: only an answer carrying the grant, or a
definite refusal, settles a payment; anything else sends the same payment
again, now or on the next request for the same thing, in this process or
the next. Also: a 402 from an origin nobody named is not paid, and a coin
whose proof the gateway does not know is set aside and the payment rebuilt.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import jwt
import pytest
from aiohttp import web
from bsv import PrivateKey

import gateway.tokens as tokens_module
from gateway.bsv.beef import read_beef
from gateway.chain.local import LocalBroadcaster
from gateway.client import InsufficientFunds, PayingSession, Wallet, fund
from gateway.client.errors import (
    ClockSkew,
    OriginNotAllowed,
    PaymentNotSettled,
    PaymentRefused,
    SpendingLimitExceeded,
)
from gateway.client.records import Purpose
from gateway.client.tokens import read_token
from gateway.devnet import Devnet, start
from gateway.payments.cashier import Cashier
from gateway.policy.reload import PolicyHolder
from gateway.store.memory import MemoryStore
from gateway.tokens import LEEWAY, KeyRing, Tokens
from tests.conftest import PAID_POLICY, PAID_SERVER, Recording

REPO = Path(__file__).resolve().parent.parent
PAY_PATH = "/.well-known/farebox/pay"
HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class Chain:
    devnet: Devnet
    url: str
    broadcaster: Recording

    def txids(self) -> list[str]:
        """Every distinct transaction the gateway broadcast, in order."""
        seen: dict[str, None] = {}
        for beef in self.broadcaster.seen:
            seen[read_beef(beef).subject.txid()] = None
        return list(seen)


@dataclass
class Lossy:
    """A real HTTP proxy in front of the gateway that spoils payment answers.

    `plan` is consumed one action per request that carries a payment
    (BRC-121 headers, or a POST to the pay endpoint); other requests pass.
    """

    gateway: str
    url: str = ""
    plan: list[str] = field(default_factory=list)
    forwarded_payments: int = 0
    delay: float = 0.0  # seconds each payment waits before it is forwarded
    unpaid_delay: float = 0.0  # seconds each request without a payment waits

    def carries_payment(self, request: web.Request) -> bool:
        return "x-bsv-beef" in request.headers or request.path == PAY_PATH


async def _lossy_app(lossy: Lossy) -> web.Application:
    http = aiohttp.ClientSession(auto_decompress=False)

    async def relay(request: web.Request) -> web.StreamResponse:
        action = "pass"
        if lossy.carries_payment(request) and lossy.plan:
            action = lossy.plan.pop(0)
        if action == "drop-before":  # never reaches the gateway
            assert request.transport is not None
            request.transport.abort()
            raise web.HTTPBadGateway()
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        if lossy.carries_payment(request):
            lossy.forwarded_payments += 1
            await asyncio.sleep(lossy.delay)
        else:
            await asyncio.sleep(lossy.unpaid_delay)
        async with http.request(
            request.method,
            lossy.gateway + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            answer = await upstream.read()
            status, out = upstream.status, upstream.headers.copy()
        for name in HOP:
            out.popall(name, None)
        if action == "pass":
            return web.Response(status=status, body=answer, headers=out)
        if action == "502":  # as nginx says when the gateway's answer is lost
            return web.Response(status=502, text="<html>502 Bad Gateway</html>")
        if action == "503":
            return web.Response(status=503, text="Service Unavailable")
        if action == "500-problem":  # a gateway fault after it took the payment
            return web.json_response(
                {"status": 500, "reason": "internal-error", "detail": "oops"},
                status=500,
                content_type="application/problem+json",
            )
        if action == "402-bare":
            return web.Response(status=402)
        if action == "no-token":  # the answer, its grant stripped on the way
            out.popall("X-Farebox-Token", None)
            if request.path == PAY_PATH:
                return web.json_response({"status": "paid"})
            return web.Response(status=status, body=answer, headers=out)
        if action == "double-spend":  # a gateway that took it and lies
            return web.json_response(
                {"status": 409, "reason": "double-spend", "detail": "spent elsewhere"},
                status=409,
                content_type="application/problem+json",
            )
        if action == "drop-after":  # the gateway took it; the answer never comes
            assert request.transport is not None
            request.transport.abort()
            raise web.HTTPBadGateway()
        raise AssertionError(action)

    async def close(_app: web.Application) -> None:
        await http.close()

    app = web.Application(client_max_size=1 << 24)
    app.router.add_route("*", "/{tail:.*}", relay)
    app.on_cleanup.append(close)
    return app


@pytest.fixture
async def chain() -> AsyncIterator[Chain]:
    runner, devnet = await start("127.0.0.1", 0)
    yield Chain(
        devnet, f"http://127.0.0.1:{runner.addresses[0][1]}", Recording(LocalBroadcaster(devnet))
    )
    await runner.cleanup()


@dataclass
class Setup:
    lossy: Lossy
    store: MemoryStore
    chain: Chain
    tokens: Tokens
    policy: PolicyHolder

    @property
    def base(self) -> str:
        return self.lossy.url

    async def receipts(self) -> list[str]:
        return [r.txid for r in await self.store.receipts()]


async def _behind_a_lossy_proxy(
    gateway, policy: str, chain: Chain, tmp_path: Path
) -> AsyncIterator[Setup]:
    """A real gateway over `policy` on the devnet, and the lossy proxy in front of it."""
    store = MemoryStore()
    tokens = Tokens(KeyRing.load(tmp_path / f"ring-{os.urandom(4).hex()}"))
    cashier = Cashier(
        PAID_SERVER, tracker=chain.devnet, broadcaster=chain.broadcaster, store=store, tokens=tokens
    )  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as patch:
        held: list[PolicyHolder] = []  # the gateway's live policy, for tests that change it
        load = PolicyHolder.load.__func__  # type: ignore[attr-defined]

        def keep(cls: type[PolicyHolder], path: Path) -> PolicyHolder:
            held.append(load(cls, path))
            return held[-1]

        patch.setattr(PolicyHolder, "load", classmethod(keep))
        base = await gateway(
            policy,
            server_key=PAID_SERVER.public_key().hex(),
            tokens=tokens,
            cashier=cashier,
            cookie_secure=False,
            store=store,
        )
    lossy = Lossy(base)
    runner = web.AppRunner(await _lossy_app(lossy), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    lossy.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield Setup(lossy, store, chain, tokens, held[0])
    await runner.cleanup()


@pytest.fixture
async def setup(gateway, upstream, chain: Chain, tmp_path: Path) -> AsyncIterator[Setup]:
    policy = PAID_POLICY.format(upstream=upstream.url)
    async for ready in _behind_a_lossy_proxy(gateway, policy, chain, tmp_path):
        yield ready


@pytest.fixture
async def wallet(chain: Chain, tmp_path: Path) -> Wallet:
    w = Wallet.create(tmp_path / "w" / "wallet.json")
    await fund(w, 10_000, chain.url)
    return w


def session(wallet: Wallet, **kwargs: object) -> PayingSession:
    kwargs.setdefault("retry_delay", 0)
    return PayingSession(wallet, **kwargs)  # type: ignore[arg-type]


async def _spent_once(setup: Setup, wallet: Wallet, price: int) -> None:
    """One transaction broadcast, one receipt, the wallet down by price + one fee."""
    txids = setup.chain.txids()
    assert len(txids) == 1, txids
    assert await setup.receipts() == txids
    assert wallet.pending() == []
    (change,) = wallet.coins()
    assert change.txid == txids[0]
    assert 10_000 - price - change.satoshis in (1, 2)  # the fee


# --- 1. an unknown outcome is never counted as paid ----------------------------------


@pytest.mark.parametrize(
    "lost", ["502", "503", "402-bare", "500-problem", "no-token", "drop-after"]
)
async def test_a_lost_answer_gets_the_same_payment_again(
    setup: Setup, wallet: Wallet, upstream, lost: str
) -> None:
    setup.lossy.plan = [lost]
    url = f"{setup.base}/archive/pages/1"
    async with session(wallet) as s:
        async with s.get(url) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.farebox_payment is not None
        async with s.get(url) as again:  # the grant it got opens it: nothing paid
            assert again.status == 200 and again.farebox_payment is None
    assert setup.lossy.forwarded_payments == 2  # the same payment, twice
    await _spent_once(setup, wallet, 25)


@pytest.mark.parametrize("lost", ["502", "drop-after", "no-token", "500-problem"])
async def test_a_lost_answer_at_the_pay_endpoint_gets_the_same_payment_again(
    setup: Setup, wallet: Wallet, lost: str
) -> None:
    setup.lossy.plan = [lost]
    paying = session(wallet, use_pay_endpoint=True)
    async with paying as s, s.get(f"{setup.base}/archive/pages/2") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.farebox_payment is not None and resp.farebox_payment.via == "pay-endpoint"
    await _spent_once(setup, wallet, 25)


async def test_an_unsettled_payment_is_sent_again_by_the_next_request(
    setup: Setup, wallet: Wallet
) -> None:
    setup.lossy.plan = ["502"] * 3  # its first send, then both at the pay endpoint
    url = f"{setup.base}/archive/pages/3"
    async with session(wallet, retries=1) as s:
        with pytest.raises(PaymentNotSettled) as unsettled:
            await s.get(url)
    assert "same payment again" in str(unsettled.value)
    (pending,) = wallet.pending()
    assert pending.txid == unsettled.value.txid
    assert wallet.balance().satoshis == 0  # its coin stays reserved, never offered again

    # Another session (as another run of a script would): the same payment.
    again = Wallet.open(wallet.path)
    async with session(again) as s, s.get(url) as resp:
        assert resp.status == 200
        assert resp.farebox_payment is not None
        assert resp.farebox_payment.txid == unsettled.value.txid
    await _spent_once(setup, again, 25)


async def test_a_payment_that_never_arrived_is_taken_when_sent_again(
    setup: Setup, wallet: Wallet
) -> None:
    # Dropped on the way there: the gateway never saw it, the client cannot know.
    # (aiohttp itself resends an idempotent request once on a reused connection.)
    setup.lossy.plan = ["drop-before"] * 4
    url = f"{setup.base}/archive/pages/4"
    async with session(wallet, retries=1) as s:
        with pytest.raises(PaymentNotSettled):
            await s.get(url)
    setup.lossy.plan = []
    assert setup.chain.txids() == []
    async with session(wallet) as s, s.get(url) as resp:
        assert resp.status == 200
    await _spent_once(setup, wallet, 25)


async def test_a_pending_payment_is_only_sent_for_what_it_was_for(
    setup: Setup, wallet: Wallet, chain: Chain
) -> None:
    await fund(wallet, 10_000, chain.url)
    setup.lossy.plan = ["502"] * 3  # its first send, then both at the pay endpoint
    async with session(wallet, retries=1) as s:
        with pytest.raises(PaymentNotSettled) as unsettled:
            await s.get(f"{setup.base}/archive/pages/5")
        # Another resource: a payment of its own, not the pending one.
        async with s.get(f"{setup.base}/archive/pages/6") as resp:
            assert resp.status == 200
            assert resp.farebox_payment is not None
            assert resp.farebox_payment.txid != unsettled.value.txid
    assert [p.txid for p in wallet.pending()] == [unsettled.value.txid]


async def test_farebox_pay_resends_an_unsettled_payment(
    setup: Setup, wallet: Wallet, chain: Chain
) -> None:
    setup.lossy.plan = ["503"] * 5  # its first send, then more than `farebox pay` retries
    url = f"{setup.base}/archive/pages/7"
    code, _, err = await farebox("pay", url, wallet=wallet.path)
    assert code != 0 and "same payment again" in err, err
    (pending,) = Wallet.open(wallet.path).pending()
    code, _, err = await farebox("pay", url, wallet=wallet.path)
    assert code == 0, err
    assert pending.txid in err
    await _spent_once(setup, Wallet.open(wallet.path), 25)


async def test_a_lost_answer_resent_after_the_price_rose_gets_its_grant(
    setup: Setup, wallet: Wallet, tmp_path: Path
) -> None:
    # The answer is lost and the client gives up for now; the admin then
    # raises the price. The same payment, sent again, still bought the page.
    setup.lossy.plan = ["502"] * 3  # its first send, then both at the pay endpoint
    url = f"{setup.base}/archive/pages/14"
    async with session(wallet, retries=1) as s:
        with pytest.raises(PaymentNotSettled) as unsettled:
            await s.get(url)
    policies = setup.policy.path
    text = (policies / "test.yaml").read_text()
    (policies / "test.yaml").write_text(text.replace("price: 25", "price: 40"))
    assert setup.policy.reload()
    async with session(wallet) as s, s.get(url) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.farebox_payment is not None
        assert resp.farebox_payment.txid == unsettled.value.txid
    await _spent_once(setup, wallet, 25)


async def test_a_pending_payment_for_a_route_wide_grant_is_resent_for_another_resource(
    setup: Setup, wallet: Wallet
) -> None:
    # /datasets/** is sold as one grant for the route: the gateway's purchase.
    setup.lossy.plan = ["502"] * 3  # its first send, then both at the pay endpoint
    async with session(wallet, retries=1) as s:
        with pytest.raises(PaymentNotSettled) as unsettled:
            await s.get(f"{setup.base}/archive/datasets/a")
    async with session(wallet) as s, s.get(f"{setup.base}/archive/datasets/b") as resp:
        assert resp.status == 200
        assert resp.farebox_payment is not None
        assert resp.farebox_payment.txid == unsettled.value.txid
    await _spent_once(setup, wallet, 100)


async def test_unsettled_payments_count_against_the_session_limit(
    setup: Setup, wallet: Wallet
) -> None:
    setup.lossy.plan = ["502"] * 3
    async with session(wallet, retries=1, max_total=30) as s:
        with pytest.raises(PaymentNotSettled):
            await s.get(f"{setup.base}/archive/pages/20")
        # 25 satoshis may be paid already: another 25 would pass the limit.
        with pytest.raises(SpendingLimitExceeded):
            await s.get(f"{setup.base}/archive/pages/21")
    assert len(setup.chain.txids()) == 1


async def test_a_gateway_claiming_a_coin_is_spent_is_not_paid_again_on_its_word(
    setup: Setup, wallet: Wallet, chain: Chain
) -> None:
    await fund(wallet, 10_000, chain.url)
    setup.lossy.plan = ["double-spend"] * 4  # takes each payment, then says "spent"
    async with session(wallet, max_total=1_000) as s:
        with pytest.raises(PaymentRefused) as refused:
            await s.get(f"{setup.base}/archive/pages/22")
    assert refused.value.reason == "double-spend"
    assert len(setup.chain.txids()) == 1  # one payment lost to the liar, not four
    (aside,) = [c for c in wallet.coins() if c.set_aside]
    assert refused.value.txid in (aside.set_aside or "")  # which payment, for the record


async def test_processes_sharing_a_wallet_buy_one_grant(setup: Setup, wallet: Wallet) -> None:
    async def staggered(url: str, *, every: float) -> list[tuple[int, str, str]]:
        async def one(n: int) -> tuple[int, str, str]:
            await asyncio.sleep(n * every)
            return await farebox("pay", url, wallet=wallet.path)

        return list(await asyncio.gather(*(one(n) for n in range(3))))

    # Payments overlap: each process has its 402 before the first is taken.
    setup.lossy.delay = 1.0
    results = await staggered(f"{setup.base}/archive/pages/30", every=0.2)
    assert all(code == 0 for code, _, _ in results), results
    assert len(setup.chain.txids()) == 1

    # One process's payment is taken while the others wait for their 402.
    setup.lossy.delay, setup.lossy.unpaid_delay = 0.0, 1.5
    results = await staggered(f"{setup.base}/archive/pages/31", every=0.8)
    assert all(code == 0 for code, _, _ in results), results
    assert len(setup.chain.txids()) == 2 == len(await setup.receipts())

    # A payment left pending: every process sends that one again.
    setup.lossy.unpaid_delay = 0.0
    setup.lossy.plan = ["502"] * 3
    url = f"{setup.base}/archive/pages/32"
    async with session(wallet, retries=1) as s:
        with pytest.raises(PaymentNotSettled):
            await s.get(url)
    setup.lossy.delay = 1.0
    results = await staggered(url, every=0.2)
    assert all(code == 0 for code, _, _ in results), results
    assert len(setup.chain.txids()) == 3 == len(await setup.receipts())
    assert Wallet.open(wallet.path).pending() == []


# --- 3. a grant refused only for the time is never bought again ------------------------


@pytest.mark.parametrize("ahead", [2, 300])
async def test_a_grant_from_a_clock_ahead_is_never_bought_again(
    setup: Setup, wallet: Wallet, ahead: int
) -> None:
    url = f"{setup.base}/archive/pages/13"
    async with session(wallet) as s, s.get(url) as resp:
        assert resp.status == 200 and resp.farebox_token is not None
        bought = resp.farebox_token
    # The same grant, as an instance whose clock runs `ahead` seconds fast mints it.
    verified = setup.tokens.verify(bought.token)
    assert verified is not None
    with pytest.MonkeyPatch.context() as patch:
        real = time.time
        patch.setattr(tokens_module, "time", SimpleNamespace(time=lambda: real() + ahead))
        skewed = Tokens(setup.tokens.ring).mint(verified[0])
    wallet.forget_token(bought.token)
    stored = read_token(bought.origin, skewed)
    assert stored is not None
    wallet.remember_token(stored)

    async with session(wallet) as s:
        if ahead <= LEEWAY:
            async with s.get(url) as resp:
                assert resp.status == 200 and resp.farebox_payment is None
        else:
            with pytest.raises(ClockSkew) as skew:
                await s.get(url)
            assert "Nothing was paid" in str(skew.value)
            assert [t.token for t in wallet.tokens(bought.origin)] == [skewed]  # kept
    assert len(setup.chain.txids()) == 1  # bought once


# --- tabs: a lost top-up answer ----------------------------------------------------------

TAB_POLICY = """\
services:
  util:
    upstream: {upstream}
    mount: /util
    tabs: {{top_up: 1000, lasts: 1d}}
    routes:
      - path: /calls/{{n}}
        price: 10
        meter: {{per: request}}
"""


@pytest.fixture
async def tab_setup(gateway, upstream, chain: Chain, tmp_path: Path) -> AsyncIterator[Setup]:
    policy = TAB_POLICY.format(upstream=upstream.url)
    async for ready in _behind_a_lossy_proxy(gateway, policy, chain, tmp_path):
        yield ready


@pytest.mark.parametrize("lost", ["502", "drop-after", "no-token"])
async def test_a_lost_top_up_answer_credits_the_tab_once(
    tab_setup: Setup, wallet: Wallet, lost: str
) -> None:
    tab_setup.lossy.plan = [lost]
    url = f"{tab_setup.base}/util/calls/1"
    async with session(wallet) as s:
        balance = await s.top_up(url, 1000)
        assert balance.satoshis == 1000  # credited once
        async with s.get(url) as resp:  # drawn from the tab: nothing paid
            assert resp.status == 200 and resp.farebox_payment is None
            assert resp.farebox_charge == 10
    await _spent_once(tab_setup, wallet, 1000)


@pytest.mark.parametrize("lost", ["502", "drop-after"])
async def test_a_lost_answer_opening_a_tab_opens_one(
    tab_setup: Setup, wallet: Wallet, lost: str
) -> None:
    tab_setup.lossy.plan = [lost]
    async with session(wallet) as s, s.get(f"{tab_setup.base}/util/calls/2") as resp:
        assert resp.status == 200, await resp.text()
        # Credited once (1000); the request was served twice (the first
        # answer was lost on its way back), so it was drawn on twice.
        assert resp.farebox_balance == 1000 - 2 * 10
    await _spent_once(tab_setup, wallet, 1000)


async def test_lost_answers_never_run_a_metered_request_again_and_again(
    tab_setup: Setup, wallet: Wallet, upstream
) -> None:
    # Each lost answer may have run the request upstream (a meter drawn, a
    # vote counted): only the first send rides on the request; the same
    # payment then goes to the pay endpoint, which never asks the upstream.
    tab_setup.lossy.plan = ["502"] * 3
    async with session(wallet) as s, s.get(f"{tab_setup.base}/util/calls/5") as resp:
        assert resp.status == 200, await resp.text()
    assert [p for p in upstream.paths if p.endswith("/calls/5")] == ["/calls/5"] * 2
    assert resp.farebox_balance == 1000 - 2 * 10
    await _spent_once(tab_setup, wallet, 1000)


async def test_a_pending_payment_the_gateway_never_took_is_replaced_once(
    setup: Setup, wallet: Wallet
) -> None:
    # Left pending for a gateway that has since restarted with a new key
    # (the demo again): it refuses the old payment plainly (wrong-payee), so
    # its coins are free and the request is paid once, anew.
    old_key = PrivateKey().public_key().hex()
    what = "GET resource /archive/pages/40"
    stale = wallet.prepare_payment(old_key, 25, purpose=Purpose(setup.base, what, old_key))
    async with session(wallet) as s, s.get(f"{setup.base}/archive/pages/40") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.farebox_payment is not None and resp.farebox_payment.txid != stale.txid
    await _spent_once(setup, wallet, 25)


# --- 2. a 402 from an origin nobody named ------------------------------------------------


@pytest.fixture
async def elsewhere() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An origin that redirects everything to `?to=` (as an open redirect on a free route)."""
    seen: list[dict[str, str]] = []

    async def redirect(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/redirect", redirect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    await runner.cleanup()


async def test_a_402_after_a_redirect_to_another_origin_is_not_paid(
    setup: Setup, wallet: Wallet, elsewhere: tuple[str, list[dict[str, str]]]
) -> None:
    start_url, _ = elsewhere
    priced = f"{setup.base}/archive/pages/8"
    before = wallet.balance()
    async with session(wallet, max_per_request=1_000) as s:
        with pytest.raises(OriginNotAllowed) as refused:
            await s.get(f"{start_url}/redirect", params={"to": priced})
    assert setup.base in str(refused.value) and "allow" in str(refused.value)
    assert wallet.balance() == before and setup.chain.txids() == []

    # Named by the caller: paid.
    allowed = session(wallet, allow_origins=[setup.base])
    async with allowed as s, s.get(f"{start_url}/redirect", params={"to": priced}) as resp:
        assert resp.status == 200 and resp.farebox_payment is not None


async def test_farebox_pay_does_not_pay_an_origin_nobody_named(
    setup: Setup, wallet: Wallet, elsewhere: tuple[str, list[dict[str, str]]]
) -> None:
    start_url, _ = elsewhere
    target = f"{start_url}/redirect?to={setup.base}/archive/pages/10"
    code, _, err = await farebox("pay", target, wallet=wallet.path)
    assert code != 0 and "--allow-origin" in err, err
    assert setup.chain.txids() == []
    code, _, err = await farebox("pay", "--allow-origin", setup.base, target, wallet=wallet.path)
    assert code == 0, err
    assert len(setup.chain.txids()) == 1


# --- 5. stale coins: set aside with the reason, the payment rebuilt -------------------


async def test_a_coin_from_another_chain_is_set_aside_and_the_payment_rebuilt(
    setup: Setup, chain: Chain, tmp_path: Path
) -> None:
    wallet = Wallet.create(tmp_path / "stale" / "wallet.json")
    old_runner, _ = await start("127.0.0.1", 0)  # the demo before a restart: another chain
    try:
        await fund(wallet, 2_000, f"http://127.0.0.1:{old_runner.addresses[0][1]}")
    finally:
        await old_runner.cleanup()
    await fund(wallet, 10_000, chain.url)  # good coins, added later
    # The stale coin is the smaller one: the wallet tries it first.
    async with session(wallet) as s, s.get(f"{setup.base}/archive/pages/11") as resp:
        assert resp.status == 200, await resp.text()
        paid = resp.farebox_payment
    assert paid is not None
    (stale,) = [c for c in wallet.coins() if c.set_aside]
    assert stale.satoshis == 2_000 and "unknown-merkle-root" in (stale.set_aside or "")
    assert setup.base in (stale.set_aside or "")
    assert wallet.balance().set_aside_satoshis == 2_000
    assert len(setup.chain.txids()) == 1 and await setup.receipts() == setup.chain.txids()

    # Never chosen again; with nothing else left the message says what to do.
    poor = Wallet.create(tmp_path / "poor" / "wallet.json")
    old_runner, _ = await start("127.0.0.1", 0)
    try:
        await fund(poor, 2_000, f"http://127.0.0.1:{old_runner.addresses[0][1]}")
    finally:
        await old_runner.cleanup()
    async with session(poor) as s:
        with pytest.raises(InsufficientFunds) as short:
            await s.get(f"{setup.base}/archive/pages/12")
    text = str(short.value)
    assert "set aside" in text and "farebox wallet coins" in text and "wallet fund" in text
    assert poor.balance().set_aside_satoshis == 2_000 and poor.pending() == []


# --- the command line ---------------------------------------------------------------------


async def farebox(*args: str, wallet: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        "--wallet",
        str(wallet),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


# --- a hostile upstream cannot make the client pay twice, or pay it -------------------

HOSTILE_POLICY = """\
services:
  archive:
    upstream: {upstream}
    mount: /archive
    routes:
      - path: /pages/{{n}}
        price: 25
        grant: {{lasts: 1h, covers: resource}}
      - path: /**
        price: free
"""


@pytest.fixture
async def hostile(gateway, chain: Chain, tmp_path: Path) -> AsyncIterator[Setup]:
    """A gateway whose upstream forges Farebox's headers: a token on every answer, the
    grant cookie, and on a free route a 402 asking clients to pay its own key."""
    thief = PrivateKey()
    junk = jwt.encode(
        {"scope": "/archive/pages/1", "covers": "resource", "methods": ["GET"],
         "exp": int(time.time()) + 3600, "txid": "ee" * 32, "svc": "archive"},
        "k" * 32,
    )  # fmt: skip

    async def page(request: web.Request) -> web.Response:
        return web.json_response(
            {"page": request.match_info["n"]},
            headers={
                "X-Farebox-Token": junk,
                "Set-Cookie": f"farebox_token={junk}; Path=/",
                "X-Farebox-Balance": "999999",
            },
        )

    async def trap(request: web.Request) -> web.Response:
        body = {
            "type": "https://farebox.dev/problems/payment-required",
            "status": 402,
            "reason": "payment-required",
            "payment": {"price": {"satoshis": 40}, "server": thief.public_key().hex(),
                        "pay_url": f"//127.0.0.1:{request.url.port}/steal"},
        }  # fmt: skip
        return web.json_response(
            body,
            status=402,
            content_type="application/problem+json",
            headers={"x-bsv-sats": "40", "x-bsv-server": thief.public_key().hex()},
        )

    app = web.Application()
    app.router.add_get("/pages/{n}", page)
    app.router.add_route("*", "/trap", trap)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    policy = HOSTILE_POLICY.format(upstream=f"http://127.0.0.1:{runner.addresses[0][1]}")
    async for ready in _behind_a_lossy_proxy(gateway, policy, chain, tmp_path):
        yield ready
    await runner.cleanup()


async def test_a_token_an_upstream_forges_is_never_taken_for_the_grant(
    hostile: Setup, wallet: Wallet
) -> None:
    url = f"{hostile.base}/archive/pages/1"
    async with session(wallet) as s:
        for _ in range(3):
            async with s.get(url) as resp:
                assert resp.status == 200, await resp.text()
                assert "X-Farebox-Balance" not in resp.headers
                assert len(resp.headers.getall("X-Farebox-Token", [])) <= 1
                cookies = resp.headers.getall("Set-Cookie", [])
                assert len([c for c in cookies if c.startswith("farebox_token=")]) <= 1
    await _spent_once(hostile, wallet, 25)  # three requests, one payment


@pytest.mark.parametrize("pay_endpoint", [False, True])
async def test_a_free_route_upstream_cannot_ask_for_payment(
    hostile: Setup, wallet: Wallet, pay_endpoint: bool
) -> None:
    before = wallet.balance()
    paying = session(wallet, use_pay_endpoint=pay_endpoint)
    async with paying as s, s.get(f"{hostile.base}/archive/trap") as resp:
        assert resp.status == 402
        assert resp.farebox_payment is None
        assert "x-bsv-server" not in resp.headers
    assert wallet.balance() == before and wallet.pending() == []


async def test_a_pay_url_naming_another_origin_is_not_followed() -> None:
    from gateway.client.challenge import _own_path

    for bad in ("//evil/steal", "/\\evil/steal", "https://evil/", "evil", "/é", "/a\nb", 7):
        assert not _own_path(bad), bad
    assert _own_path("/.well-known/farebox/pay")


async def test_allow_origin_must_be_an_origin(wallet: Wallet) -> None:
    for bad in ("127.0.0.1:8402", "ftp://x", "http://", "https://host/path", "nonsense"):
        with pytest.raises(ValueError, match="not an origin"):
            PayingSession(wallet, allow_origins=[bad])
        code, _, err = await farebox(
            "pay", "--allow-origin", bad, "http://127.0.0.1:9/", wallet=wallet.path
        )
        assert code == 2 and "not an origin" in err and "Traceback" not in err

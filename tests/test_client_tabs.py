"""The paying client on metered routes: prepaid tabs opened, drawn on, topped up.

Everything is real, as in test_client.py: a devnet chain (its faucet over
HTTP), a gateway whose Cashier checks roots against that chain and
broadcasts to it, signed transactions and Atomic BEEF; the upstream is a
small metered service that reports units in `X-Usage-Units`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from gateway.chain.local import LocalBroadcaster
from gateway.client import (
    ClientError,
    PayingSession,
    SpendingLimitExceeded,
    StoredToken,
    TabBalance,
    Wallet,
    fund,
)
from gateway.client.challenge import read_challenge
from gateway.client.cli import main
from gateway.client.tokens import read_token
from gateway.devnet import Devnet, TxStatus, start
from gateway.payments.cashier import Cashier
from gateway.pipeline.credentials import Revocations
from gateway.store.memory import MemoryStore
from gateway.tokens import KeyRing, Tokens
from tests.conftest import PAID_SERVER, Recording

REPO = Path(__file__).resolve().parent.parent

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
        methods: [POST]
        price: 150
        meter: {{per: unit, most: 5, units_header: X-Usage-Units}}
      - path: /files/{{size}}
        price: 8
        meter: {{per: mb, most: 2}}
      - path: /reports/{{r}}
        price: 25
        grant: {{lasts: 1h, covers: resource}}
      - path: /**
        price: free
"""


# --- a real chain, a metered upstream, a real gateway -------------------------------


@dataclass
class Chain:
    devnet: Devnet
    url: str
    broadcaster: Recording


@dataclass
class Util:
    base: str  # the gateway's base URL
    store: MemoryStore
    tokens: Tokens


@pytest.fixture
async def chain() -> AsyncIterator[Chain]:
    runner, devnet = await start("127.0.0.1", 0)
    yield Chain(
        devnet, f"http://127.0.0.1:{runner.addresses[0][1]}", Recording(LocalBroadcaster(devnet))
    )
    await runner.cleanup()


@pytest.fixture
async def meters() -> AsyncIterator[str]:
    """The utility's service: calls, meter draws that report units, files by size."""

    async def call(request: web.Request) -> web.Response:
        return web.json_response({"call": request.match_info["n"]})

    async def draw(request: web.Request) -> web.Response:
        asked = await request.json()
        return web.json_response(
            {"meter": request.match_info["m"], "kwh": asked["kwh"]},
            headers={"X-Usage-Units": str(asked["kwh"])},
        )

    async def file(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        if "chunked" not in request.query:
            return web.Response(body=b"x" * size, content_type="application/octet-stream")
        response = web.StreamResponse()  # no Content-Length: the charge is known at the end
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"x" * size)
        await response.write_eof()
        return response

    async def report(request: web.Request) -> web.Response:
        return web.json_response({"report": request.match_info["r"]})

    app = web.Application()
    app.router.add_get("/calls/{n}", call)
    app.router.add_post("/meters/{m}/draw", draw)
    app.router.add_get("/files/{size}", file)
    app.router.add_get("/reports/{r}", report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def util(gateway, meters: str, chain: Chain, tmp_path: Path) -> Util:
    store = MemoryStore()
    tokens = Tokens(KeyRing.load(tmp_path / f"ring-{os.urandom(4).hex()}"))
    cashier = Cashier(
        PAID_SERVER, tracker=chain.devnet, broadcaster=chain.broadcaster, store=store, tokens=tokens
    )  # type: ignore[arg-type]
    base = await gateway(
        POLICY.format(upstream=meters),
        server_key=PAID_SERVER.public_key().hex(),
        tokens=tokens,
        cashier=cashier,
        cookie_secure=False,
        store=store,
        revocations=Revocations(store, ttl=0.001),
    )
    return Util(base, store, tokens)


@pytest.fixture
async def wallet(chain: Chain, tmp_path: Path) -> Wallet:
    w = Wallet.create(tmp_path / "w" / "wallet.json")
    await fund(w, 10_000, chain.url)
    return w


def tab_tokens(wallet: Wallet, base: str) -> list[StoredToken]:
    return [t for t in Wallet.open(wallet.path).tokens(base) if t.covers == "tab"]


def draw(kwh: str) -> dict[str, Any]:
    """A meter draw's request body, as keyword arguments of a request."""
    return {"json": {"kwh": kwh}}


# --- reading the 402 ----------------------------------------------------------------


async def test_the_challenge_says_how_the_tab_is_drawn_on(util: Util) -> None:
    draw_url = f"{util.base}/util/meters/M-1/draw"
    async with aiohttp.ClientSession() as http, http.post(draw_url, json={"kwh": 1}) as resp:
        assert resp.status == 402
        challenge = await read_challenge(resp)
    assert challenge is not None and challenge.for_tab
    assert (challenge.satoshis, challenge.covers, challenge.scope) == (1000, "tab", "/util/**")
    assert challenge.reason == "payment-required"
    terms = challenge.tab
    assert terms is not None
    assert (terms.per, terms.unit_price, terms.most_units) == ("unit", Decimal(150), Decimal(5))
    assert (terms.most_satoshis, terms.top_up, terms.balance) == (Decimal(750), 1000, None)
    assert terms.units_header == "X-Usage-Units"
    assert terms.balance_url == "/.well-known/farebox/tab"


# --- opening a tab, drawing on it ---------------------------------------------------


async def test_a_metered_402_opens_a_tab_that_later_requests_draw_on(
    util: Util, wallet: Wallet, chain: Chain
) -> None:
    base = util.base
    async with PayingSession(wallet) as s:
        async with s.get(f"{base}/util/calls/1") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["call"] == "1"
            paid = resp.farebox_payment
            assert paid is not None and paid.satoshis == 1000 and paid.via == "headers"
            assert paid.grant is not None and paid.grant.covers == "tab"
            assert paid.grant.scope == "/util/**" and paid.grant.methods == ("*",)
            tab = paid.tab
            assert tab.startswith("t") and resp.farebox_tab == tab
            assert (resp.farebox_charge, resp.farebox_balance) == (Decimal(10), Decimal(990))

        # Drawn on, nothing paid: per request, per unit the upstream reports, per MB.
        async with s.get(f"{base}/util/calls/2") as resp:
            assert resp.status == 200 and resp.farebox_used_token
            assert resp.farebox_payment is None and resp.farebox_tab == tab
            assert (resp.farebox_charge, resp.farebox_balance) == (Decimal(10), Decimal(980))
        async with s.post(f"{base}/util/meters/M-1/draw", **draw("2.5")) as resp:
            assert resp.status == 200 and (await resp.json())["kwh"] == "2.5"
            assert (resp.farebox_charge, resp.farebox_balance) == (Decimal(375), Decimal(605))
        async with s.get(f"{base}/util/files/366000") as resp:
            assert resp.status == 200 and len(await resp.read()) == 366_000
            assert resp.farebox_charge == Decimal("2.928")
            assert resp.farebox_balance == Decimal("602.072")
        assert s.spent == 1000 and len(s.payments) == 1
    assert len(chain.broadcaster.seen) == 1
    assert chain.devnet.status(paid.txid).status == TxStatus.SEEN_ON_NETWORK
    assert wallet.balance().satoshis == 10_000 - 1000 - paid.fee

    # Another session (another process, say) finds the tab in the wallet file.
    async with PayingSession(Wallet.open(wallet.path)) as s:
        async with s.get(f"{base}/util/calls/3") as resp:
            assert resp.farebox_used_token and resp.farebox_tab == tab
            assert resp.farebox_balance == Decimal("592.072")
        assert await s.tab_balance(f"{base}/util/calls/3") == TabBalance(
            tab=tab,
            service="util",
            scope="/util/**",
            satoshis=Decimal("592.072"),
            expires=paid.grant.expires,
        )
    assert [t.tab for t in tab_tokens(wallet, base)] == [tab]


async def test_a_per_mb_answer_of_unknown_length_says_the_most_it_costs(
    util: Util, wallet: Wallet
) -> None:
    async with PayingSession(wallet) as s:
        async with s.get(f"{util.base}/util/files/250000?chunked=1") as resp:
            assert resp.status == 200 and len(await resp.read()) == 250_000
            assert resp.farebox_payment is not None
            assert resp.farebox_charge is None and resp.farebox_charge_limit == Decimal(16)
            assert resp.farebox_balance == Decimal(1000 - 16)  # while the most is held
        balance = await s.tab_balance(f"{util.base}/util/")
    assert balance is not None and balance.satoshis == Decimal(998)  # 0.25 MB at 8


async def test_priced_routes_of_the_service_are_still_bought_as_grants(
    util: Util, wallet: Wallet
) -> None:
    async with PayingSession(wallet) as s:
        (await s.get(f"{util.base}/util/calls/1")).release()
        async with s.get(f"{util.base}/util/reports/1") as resp:  # the tab does not open it
            assert resp.status == 200 and resp.farebox_tab is None
            paid = resp.farebox_payment
            assert paid is not None and paid.satoshis == 25 and paid.tab == ""
            assert paid.grant is not None and paid.grant.covers == "resource"
        async with s.get(f"{util.base}/util/reports/1") as resp:
            assert resp.farebox_used_token and resp.farebox_token.covers == "resource"
        async with s.get(f"{util.base}/util/calls/2") as resp:  # the tab was kept
            assert resp.farebox_used_token and resp.farebox_balance == Decimal(980)
        async with s.get(f"{util.base}/util/free/thing") as resp:  # free: nothing drawn
            assert resp.status == 404  # (from the upstream, which has no such page)
            assert not resp.farebox_used_token and resp.farebox_tab is None
        assert s.spent == 1025


async def test_concurrent_requests_open_one_tab(util: Util, wallet: Wallet, chain: Chain) -> None:
    async with PayingSession(wallet) as s:
        responses = await asyncio.gather(
            *(s.get(f"{util.base}/util/calls/{n}") for n in range(4)),
            s.post(f"{util.base}/util/meters/M-2/draw", **draw("1")),
        )
        for resp in responses:
            assert resp.status == 200
            resp.release()
    assert sum(r.farebox_payment is not None for r in responses) == 1
    assert len({r.farebox_tab for r in responses}) == 1
    assert len(chain.broadcaster.seen) == 1
    balance = await _balance(wallet, util.base)
    assert balance == Decimal(1000 - 4 * 10 - 150)


async def _balance(wallet: Wallet, base: str) -> Decimal | None:
    async with PayingSession(Wallet.open(wallet.path)) as s:
        found = await s.tab_balance(f"{base}/util/")
    return None if found is None else found.satoshis


# --- running low: the same tab is topped up -----------------------------------------


@pytest.mark.parametrize("use_pay_endpoint", [False, True])
async def test_an_exhausted_tab_is_topped_up_not_replaced(
    util: Util, wallet: Wallet, chain: Chain, use_pay_endpoint: bool
) -> None:
    url = f"{util.base}/util/meters/M-1/draw"
    async with PayingSession(wallet, use_pay_endpoint=use_pay_endpoint) as s:
        async with s.post(url, **draw("5")) as resp:  # opens with 1000, draws 750
            assert resp.status == 200 and resp.farebox_balance == Decimal(250)
            first = resp.farebox_payment
            assert first is not None and first.tab
            assert first.via == ("pay-endpoint" if use_pay_endpoint else "headers")
        # 750 may be drawn, 250 are left: tab-exhausted, so a top-up of the same tab.
        async with s.post(url, **draw("4")) as resp:
            assert resp.status == 200, await resp.text()
            second = resp.farebox_payment
            assert second is not None and second.satoshis == 1000
            assert second.tab == first.tab and resp.farebox_tab == first.tab
            assert second.txid != first.txid
            assert (resp.farebox_charge, resp.farebox_balance) == (Decimal(600), Decimal(650))
        async with s.get(f"{util.base}/util/calls/9") as resp:
            assert resp.farebox_used_token and resp.farebox_balance == Decimal(640)
        assert s.spent == 2000
    assert len(chain.broadcaster.seen) == 2
    # Only the newest token of the tab is kept: it lasts longest.
    (kept,) = tab_tokens(wallet, util.base)
    assert kept.tab == first.tab and kept.txid == second.txid
    assert second.grant is not None and kept.expires >= first.grant.expires


async def test_the_session_top_up_preference_sets_the_amount(
    util: Util, wallet: Wallet, chain: Chain
) -> None:
    url = f"{util.base}/util/meters/M-1/draw"
    async with PayingSession(wallet, top_up=1200) as s:
        async with s.post(url, **draw("5")) as resp:
            assert resp.farebox_payment.satoshis == 1200
            assert resp.farebox_balance == Decimal(450)
        async with s.get(f"{util.base}/util/calls/1") as resp:  # enough for a call
            assert resp.farebox_used_token and resp.farebox_balance == Decimal(440)
        async with s.post(url, **draw("1")) as resp:  # not for a draw: 750 are held
            assert resp.farebox_payment.satoshis == 1200
            assert resp.farebox_balance == Decimal(440 + 1200 - 150)
    assert s.spent == 2400 and len(chain.broadcaster.seen) == 2


async def test_a_revoked_tab_is_forgotten_and_a_new_one_opened(
    util: Util, wallet: Wallet, chain: Chain
) -> None:
    async with PayingSession(wallet) as s:
        async with s.get(f"{util.base}/util/calls/1") as resp:
            old = resp.farebox_payment.tab
        await util.store.revoke(old, int(time.time()) + 3600)
        await asyncio.sleep(0.01)  # past the revocation cache
        async with s.get(f"{util.base}/util/calls/2") as resp:
            assert resp.status == 200
            new = resp.farebox_payment
            assert new is not None and new.tab and new.tab != old
            assert resp.farebox_balance == Decimal(990)
    assert [t.tab for t in tab_tokens(wallet, util.base)] == [new.tab]


# --- top_up() and tab_balance() -----------------------------------------------------


async def test_top_up_and_tab_balance(util: Util, wallet: Wallet, chain: Chain) -> None:
    calls = f"{util.base}/util/calls/1"
    async with PayingSession(wallet) as s:
        assert await s.tab_balance(calls) is None  # no tab yet

        opened = await s.top_up(calls, 500)  # less than the smallest top-up: that is paid
        assert opened.satoshis == Decimal(1000) and opened.service == "util"
        assert opened.scope == "/util/**" and opened.tab.startswith("t")
        assert s.payments[-1].satoshis == 1000 and s.payments[-1].via == "pay-endpoint"

        # A POST-only route, asked with its method: the same tab grows.
        topped = await s.top_up(f"{util.base}/util/meters/M-3/draw", 2500, method="POST")
        assert topped.tab == opened.tab and topped.satoshis == Decimal(3500)
        assert topped.expires >= opened.expires
        assert await s.tab_balance(f"{util.base}/util/") == topped

        async with s.get(calls) as resp:  # drawn on, nothing paid
            assert resp.farebox_used_token and resp.farebox_balance == Decimal(3490)
        assert s.spent == 3500 and len(s.payments) == 2

        with pytest.raises(ClientError, match="not paid from a prepaid tab"):
            await s.top_up(f"{util.base}/util/reports/1", 1000)
        with pytest.raises(ClientError, match="not paid from a prepaid tab"):
            await s.top_up(f"{util.base}/util/free/thing", 1000)

        # A revoked tab is not topped up: a new one is opened.
        await util.store.revoke(opened.tab, int(time.time()) + 3600)
        await asyncio.sleep(0.01)  # past the revocation cache
        renewed = await s.top_up(calls, 1000)
        assert renewed.tab != opened.tab and renewed.satoshis == Decimal(1000)
    assert len(chain.broadcaster.seen) == 3
    for payment in s.payments:
        assert chain.devnet.status(payment.txid).status == TxStatus.SEEN_ON_NETWORK


def forged_tab(wallet: Wallet, base: str) -> StoredToken:
    """A tab token the gateway never issued (as after its keys changed)."""
    claims = {
        "svc": "util",
        "scope": "/util/**",
        "covers": "tab",
        "methods": ["*"],
        "tab": "t" + "0" * 31,
        "exp": int(time.time()) + 2 * 86400,  # outlasts the real tab's: presented first
        "txid": "00" * 32,
    }
    token = read_token(
        base, jwt.encode(claims, "not the key of the gateway, nor any key", algorithm="HS256")
    )
    assert token is not None and token.tab == "t" + "0" * 31
    wallet.remember_token(token)
    return token


async def test_a_tab_the_gateway_does_not_know_is_forgotten(
    util: Util, wallet: Wallet, chain: Chain
) -> None:
    calls = f"{util.base}/util/calls/1"
    async with PayingSession(wallet) as s:
        forged_tab(wallet, util.base)
        assert await s.tab_balance(calls) is None  # 401 no-tab
        assert tab_tokens(wallet, util.base) == []

        # The pay endpoint refuses it (bad-tab): a new tab is opened instead.
        forged = forged_tab(wallet, util.base)
        opened = await s.top_up(calls, 1000)
        assert opened.tab != forged.tab and opened.satoshis == Decimal(1000)
        assert len(s.payments) == 1 and s.spent == 1000

        # Presented with a request it gets a plain 402: dropped, the real tab used.
        forged_tab(wallet, util.base)
        async with s.get(calls) as resp:
            assert resp.status == 200 and resp.farebox_payment is None
            assert resp.farebox_tab == opened.tab and resp.farebox_balance == Decimal(990)
    assert [t.tab for t in tab_tokens(wallet, util.base)] == [opened.tab]
    assert len(chain.broadcaster.seen) == 1
    assert wallet.pending() == [] and wallet.balance().pending_coins == 0


# --- limits -------------------------------------------------------------------------


async def test_limits_refuse_an_over_limit_top_up(util: Util, wallet: Wallet, chain: Chain) -> None:
    calls = f"{util.base}/util/calls/1"
    async with PayingSession(wallet, max_per_request=999) as s:
        with pytest.raises(SpendingLimitExceeded) as caught:
            await s.get(calls)
    assert (caught.value.kind, caught.value.price, caught.value.limit) == ("per-request", 1000, 999)

    async with PayingSession(wallet, top_up=5000, max_per_request=2000) as s:
        with pytest.raises(SpendingLimitExceeded) as caught:
            await s.get(calls)
        assert caught.value.price == 5000
        with pytest.raises(SpendingLimitExceeded):
            await s.top_up(calls, 2001)

    async with PayingSession(wallet, max_total=1500) as s:
        url = f"{util.base}/util/meters/M-1/draw"
        async with s.post(url, **draw("5")) as resp:  # opens with 1000: 250 left
            assert resp.status == 200
        with pytest.raises(SpendingLimitExceeded) as caught:
            await s.post(url, **draw("1"))  # needs a top-up of 1000: 2000 in all
        assert (caught.value.kind, caught.value.spent) == ("total", 1000)
        async with s.get(calls) as resp:  # what the tab holds is still spent freely
            assert resp.status == 200 and resp.farebox_balance == Decimal(240)
    assert len(chain.broadcaster.seen) == 1
    assert wallet.pending() == [] and wallet.balance().pending_coins == 0
    # The tab survived the refusal: nothing of it was forgotten.
    assert len(tab_tokens(wallet, util.base)) == 1


# --- the command line ---------------------------------------------------------------


async def farebox(*args: str, wallet: Path) -> tuple[int, str, str]:
    """`farebox ...` as a real process (the gateway runs in this test's event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.client.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "FAREBOX_WALLET": str(wallet)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def farebox_inline(capsys, *args: str) -> tuple[int, str, str]:
    """The same commands in this process (a thread: they run their own event loop)."""
    try:
        await asyncio.to_thread(main, list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


async def test_cli_opens_draws_on_and_tops_up_a_tab(
    util: Util, wallet: Wallet, chain: Chain
) -> None:
    calls = f"{util.base}/util/calls/4"
    code, out, err = await farebox("pay", "--balance", calls, wallet=wallet.path)
    assert code == 1 and out == "" and "no tab for" in err

    code, out, err = await farebox(
        "pay", "--top-up", "2000", "--balance", calls, wallet=wallet.path
    )
    assert code == 0, err
    assert "paid 2000 satoshis (fee 1) into tab t" in err and "via the pay endpoint: txid" in err
    (tab,) = [t.tab for t in tab_tokens(wallet, util.base)]
    assert out.startswith(f"tab {tab}: 2000 satoshis (service util, /util/**;")
    txid = err.split("txid ")[1].split()[0]
    assert chain.devnet.status(txid).status == TxStatus.SEEN_ON_NETWORK

    code, out, err = await farebox("pay", calls, wallet=wallet.path)
    assert code == 0, err
    assert json.loads(out) == {"call": "4"}  # the body, and only the body, on stdout
    assert err.strip() == f"charged 10 satoshis from tab {tab[:10]}…, 1990 left"

    code, out, err = await farebox(
        "pay", "--data", '{"kwh": "0.5"}', f"{util.base}/util/meters/M-7/draw", wallet=wallet.path
    )
    assert code == 0 and json.loads(out)["kwh"] == "0.5"
    assert "charged 75 satoshis from tab" in err and "1915 left" in err

    code, out, _ = await farebox("pay", "--balance", f"{util.base}/util/", wallet=wallet.path)
    assert code == 0 and out.startswith(f"tab {tab}: 1915 satoshis")


async def test_cli_top_up_amounts_limits_and_priced_routes(
    util: Util, chain: Chain, tmp_path: Path, capsys, monkeypatch
) -> None:
    path = tmp_path / "inline.json"
    monkeypatch.setenv("FAREBOX_WALLET", str(path))
    assert (await farebox_inline(capsys, "wallet", "new"))[0] == 0
    code, _, err = await farebox_inline(
        capsys, "wallet", "fund", "--devnet", chain.url, "--satoshis", "20000"
    )
    assert code == 0, err
    url = f"{util.base}/util/meters/M-1/draw"

    # --top-up is over the default --max: it raises it.
    code, out, err = await farebox_inline(
        capsys, "pay", "--top-up", "3000", "--data", '{"kwh": 1}', url
    )
    assert code == 0, err
    assert "paid 3000 satoshis (fee 1) into tab t" in err and ": txid " in err
    assert "charged 150 satoshis from tab" in err and "2850 left" in err

    code, _, err = await farebox_inline(capsys, "pay", "--top-up", "3000", "--max", "2000", url)
    assert code == 2 and "--top-up 3000 is more than --max 2000" in err
    code, _, err = await farebox_inline(capsys, "pay", "--balance", "--data", "x", url)
    assert code == 2 and "drop --data" in err
    code, _, err = await farebox_inline(capsys, "pay", "--top-up", "0", url)
    assert code == 2 and "at least 1" in err

    # A top-up now, on a route that takes POST only.
    code, out, err = await farebox_inline(
        capsys, "pay", "--max", "1500", "--top-up", "1500", "--balance", "--method", "POST", url
    )
    assert code == 0, err
    assert "paid 1500 satoshis (fee 1) into tab t" in err and "via the pay endpoint" in err
    assert out.startswith("tab t") and ": 4350 satoshis (service util" in out

    # Explicitly over --max: refused, nothing paid.
    code, out, err = await farebox_inline(
        capsys, "pay", "--max", "999", "--balance", "--top-up", "999", "--method", "POST", url
    )
    assert code == 1 and out == ""
    assert "costs 1000 satoshis; the limit per request is 999; nothing was paid" in err

    # A priced route prints as it always did.
    code, out, err = await farebox_inline(capsys, "pay", f"{util.base}/util/reports/2")
    assert code == 0 and json.loads(out) == {"report": "2"}
    assert err.startswith("paid 25 satoshis (fee 1): txid ")
    code, out, err = await farebox_inline(capsys, "pay", f"{util.base}/util/reports/2")
    assert code == 0 and "paid nothing: used a stored token" in err

    # A top-up on a route that takes only POST, asked with GET: said plainly.
    code, out, err = await farebox_inline(capsys, "pay", "--balance", "--top-up", "1000", url)
    assert code == 1 and "not paid from a prepaid tab (it answered 405)" in err

"""Clock skew between instances sharing a key ring (issue 13, item 3).

A token is often read by another instance than the one that minted it. Its
times (iat, nbf, exp) are checked with one slack, `tokens.LEEWAY`, on every
path that reads tokens: the gateway, nginx auth_request, the receipts and
tab endpoints, metered routes, checkout tickets. A genuine token minted by
a clock further ahead is refused as `grant-not-yet-valid`, never as if it
were unknown: a plain 402 would make the client pay again.

Real gateways, upstreams and signed payments (test tracker, recording
broadcaster). "Another instance" is a second `Tokens` over the same key
ring, minting while its clock (gateway.tokens' `time`) runs ahead.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import jwt
import pytest
from aiohttp import web

import gateway.payments.checkout as checkout_module
import gateway.tokens as tokens_module
from gateway.edge import urls
from gateway.payments.cashier import Cashier
from gateway.payments.checkout import AUDIENCE, open_checkout, read_ticket
from gateway.pipeline.credentials import Revocations
from gateway.store.memory import MemoryStore
from gateway.tokens import ACCESS, LEEWAY, Grant, KeyRing, Tokens, new_grant_id
from tests.chainkit import Tracker
from tests.conftest import PAID_SERVER, Paid
from tests.test_auth_request import ask
from tests.test_paid_access import FakeBroadcaster, brc121, fetch, send
from tests.test_tabs import POLICY as METERED_POLICY
from tests.test_tabs import Setup as Metered
from tests.test_tabs import bearer, get, metered_app

AHEAD = 2  # seconds: within the leeway
FAR_AHEAD = 300  # five minutes: a broken clock


@contextmanager
def clock(offset: float, *modules: object) -> Iterator[None]:
    """Run these modules' `time.time()` `offset` seconds off (default: gateway.tokens)."""
    real = time.time
    skewed = SimpleNamespace(time=lambda: real() + offset)
    with pytest.MonkeyPatch.context() as patch:
        for module in modules or (tokens_module,):
            patch.setattr(module, "time", skewed)
        yield


def minted_ahead(tokens: Tokens, grant: Grant, seconds: float) -> str:
    """The token another instance (same key ring) mints while its clock runs ahead."""
    other = Tokens(tokens.ring)
    with clock(seconds):
        token = other.mint(grant)
    assert jwt.decode(token, options={"verify_signature": False})["iat"] >= time.time() + 1
    return token


def page_grant(**overrides: object) -> Grant:
    values: dict[str, object] = dict(
        id=new_grant_id(), service="archive", scope="/archive/pages/1", covers="resource",
        methods=("GET", "HEAD"), expires=int(time.time()) + 3600, txid="ab" * 32, satoshis=25,
        payer="cd" * 16,
    )  # fmt: skip
    values.update(overrides)
    return Grant(**values)  # type: ignore[arg-type]


def reason(body: bytes) -> str:
    return json.loads(body)["reason"]


@pytest.fixture
async def paid(paid_gateway) -> SimpleNamespace:
    tracker = Tracker()
    started: Paid = await paid_gateway(tracker, FakeBroadcaster())
    return SimpleNamespace(base=started.base, tokens=started.tokens, tracker=tracker)


async def bought(paid: SimpleNamespace, page: str = "/archive/pages/1") -> tuple[Grant, str]:
    """Pay for a page for real: its grant (a receipt is stored) and the txid."""
    payment = brc121(paid, 25)
    status, headers, body, _ = await fetch(paid.base + page, send(payment))
    assert status == 200, body
    verified = paid.tokens.verify(headers["X-Farebox-Token"])
    assert verified is not None
    return verified[0], payment["_txid"]


# --- a token minted by a clock 2 s ahead opens everywhere -------------------------------


async def test_token_from_a_clock_ahead_is_proxied(paid, upstream) -> None:
    grant, _ = await bought(paid)
    served = len(upstream.seen)
    token = minted_ahead(paid.tokens, grant, AHEAD)
    status, headers, body, _ = await fetch(
        paid.base + "/archive/pages/1", {"Authorization": f"Bearer {token}"}
    )
    assert status == 200, body
    assert b'"/pages/1"' in body and headers["X-Upstream"] == "yes"
    # As a cookie too.
    status, _, body, _ = await fetch(
        paid.base + "/archive/pages/1", {"Cookie": f"farebox_token={token}"}
    )
    assert status == 200, body
    assert len(upstream.seen) == served + 2


async def test_token_from_a_clock_ahead_passes_auth_request(paid, upstream) -> None:
    token = minted_ahead(paid.tokens, page_grant(), AHEAD)
    status, headers = await ask(paid.base, "/archive/pages/1", {"Authorization": f"Bearer {token}"})
    assert status == 204 and headers["X-Farebox-Grant"]
    assert upstream.seen == []  # nginx proxies, not Farebox


async def test_receipt_readable_with_a_token_from_a_clock_ahead(paid) -> None:
    grant, txid = await bought(paid)
    token = minted_ahead(paid.tokens, grant, AHEAD)
    status, _, body, _ = await fetch(
        paid.base + urls.RECEIPTS + txid, {"Authorization": f"Bearer {token}"}
    )
    assert status == 200, body
    assert json.loads(body)["txid"] == txid


# --- expiry: the same leeway on exp, decoded and cached ---------------------------------


async def test_expiry_has_the_same_leeway(paid, upstream) -> None:
    url = paid.base + "/archive/pages/1"
    # Expired 2 s ago by the minting clock: within the leeway, still opens.
    just = paid.tokens.mint(page_grant(expires=int(time.time()) - AHEAD))
    status, _, body, _ = await fetch(url, {"Authorization": f"Bearer {just}"})
    assert status == 200, body
    # Expired longer ago than the leeway: a plain 402, nothing proxied.
    served = len(upstream.seen)
    long_ago = paid.tokens.mint(page_grant(expires=int(time.time()) - LEEWAY - 5))
    status, headers, body, _ = await fetch(url, {"Authorization": f"Bearer {long_ago}"})
    assert status == 402 and reason(body) == "payment-required"
    assert headers["x-bsv-sats"] == "25"
    assert len(upstream.seen) == served


async def test_cached_token_expires_with_the_same_leeway(paid) -> None:
    url = paid.base + "/archive/pages/1"
    expires = int(time.time()) + 60
    token = paid.tokens.mint(page_grant(expires=expires))
    auth = {"Authorization": f"Bearer {token}"}
    assert (await fetch(url, auth))[0] == 200  # decoded and cached
    with clock(expires + AHEAD - time.time()):  # 2 s past exp: the cached entry still opens
        assert (await fetch(url, auth))[0] == 200
    with clock(expires + LEEWAY + 1 - time.time()):
        status, _, body, _ = await fetch(url, auth)
    assert status == 402 and reason(body) == "payment-required"


# --- beyond the leeway: told apart, never a plain 402 ------------------------------------


async def test_token_from_a_clock_far_ahead_is_told_apart(paid, upstream, monkeypatch) -> None:
    decodes = []
    real_decode = tokens_module.jwt.decode

    def counting(*args, **kwargs):
        decodes.append(kwargs.get("audience"))
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(tokens_module.jwt, "decode", counting)
    token = minted_ahead(paid.tokens, page_grant(), FAR_AHEAD)
    auth = {"Authorization": f"Bearer {token}"}
    url = paid.base + "/archive/pages/1"
    for _ in range(2):
        status, headers, body, _ = await fetch(url, auth)
        assert status == 402
        problem = json.loads(body)
        assert problem["reason"] == "grant-not-yet-valid", problem
        assert "do not pay again" in problem["detail"]
        # Still the full challenge: what the resource costs, and where to pay.
        assert headers["x-bsv-sats"] == "25" and headers["x-bsv-server"]
        assert problem["payment"]
        assert 0 < int(headers["Retry-After"]) <= FAR_AHEAD - LEEWAY + 1
    assert upstream.seen == []
    assert decodes.count(ACCESS) == 1  # decoded once, then a cached lookup

    # nginx auth_request: 401 with the price (nginx then asks Farebox, which says why).
    status, headers = await ask(paid.base, "/archive/pages/1", auth)
    assert status == 401 and headers["x-bsv-sats"] == "25"

    # A token that would not cover the request anyway is no reason: a plain 402.
    other = minted_ahead(paid.tokens, page_grant(scope="/archive/pages/2"), FAR_AHEAD)
    status, _, body, _ = await fetch(url, {"Authorization": f"Bearer {other}"})
    assert status == 402 and reason(body) == "payment-required"

    # Once this clock is within the leeway of the minting one, the token opens.
    with clock(FAR_AHEAD - LEEWAY + 1):
        status, _, body, _ = await fetch(url, auth)
    assert status == 200, body
    assert decodes.count(ACCESS) == 2  # only `other` was decoded since
    assert len(upstream.seen) == 1


async def test_a_payment_resent_after_a_clock_far_ahead_took_it_gets_its_grant(
    paid, upstream
) -> None:
    payment = brc121(paid, 25)
    page = paid.base + "/archive/pages/3"
    with clock(FAR_AHEAD):  # the instance that took it runs five minutes ahead
        status, headers, body, _ = await fetch(page, send(payment))
    assert status == 200, body
    first = headers["X-Farebox-Token"]
    # The answer was lost; the client sends the same payment to an instance on
    # time: the grant it bought, not "grant-expired" (which would make it pay again).
    status, headers, body, _ = await fetch(page, send(payment))
    assert status == 200, body
    assert headers["X-Farebox-Token"] == first


# --- tabs: metered routes and the balance endpoint --------------------------------------


@pytest.fixture
async def metered(gateway, tmp_path: Path) -> AsyncIterator[Metered]:
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
        METERED_POLICY.format(upstream=upstream),
        server_key=PAID_SERVER.public_key().hex(),
        tokens=tokens,
        cashier=cashier,
        cookie_secure=False,
        store=store,
        revocations=Revocations(store),
    )
    setup = Metered(base, tracker, broadcaster, store)
    setup.calls = calls
    setup.tokens = tokens  # type: ignore[attr-defined]
    yield setup
    await runner.cleanup()


def tab_token_ahead(metered: Metered, token: str, seconds: float) -> str:
    """The same tab token, minted by another instance whose clock runs ahead."""
    tokens: Tokens = metered.tokens  # type: ignore[attr-defined]
    verified = tokens.verify(token)
    assert verified is not None and verified[0].tab
    return minted_ahead(tokens, verified[0], seconds)


async def test_tab_token_from_a_clock_ahead_draws_on_its_tab(metered: Metered) -> None:
    token, tab = await metered.open_tab(1000)  # 990 left after the opening call
    ahead = tab_token_ahead(metered, token, AHEAD)
    status, headers, body = await get(f"{metered.base}/util/calls/2", bearer(ahead))
    assert status == 200, body
    assert headers["X-Farebox-Tab"] == tab and headers["X-Farebox-Balance"] == "980"
    assert len(metered.broadcaster.seen) == 1  # paid once
    # The balance endpoint reads it too (credentials.tab_grant).
    status, _, body = await get(f"{metered.base}{urls.TAB}", bearer(ahead))
    assert status == 200 and json.loads(body)["balance_satoshis"] == "980"


async def test_tab_token_from_a_clock_far_ahead_is_told_apart(metered: Metered) -> None:
    token, tab = await metered.open_tab(1000)
    calls = len(metered.calls)
    ahead = tab_token_ahead(metered, token, FAR_AHEAD)
    status, headers, body = await get(f"{metered.base}/util/calls/3", bearer(ahead))
    assert status == 402
    problem = json.loads(body)
    assert problem["reason"] == "grant-not-yet-valid", problem
    assert headers["x-bsv-sats"] == "1000" and problem["payment"]["tab"]  # the tab challenge
    assert len(metered.calls) == calls  # nothing proxied
    assert await metered.store.balance(tab) == 990_000  # nothing charged

    # Nor is the tab unknown where it is asked about or topped up: a client
    # told "no tab" would forget it and open another.
    status, _, body = await get(f"{metered.base}{urls.TAB}", bearer(ahead))
    assert status == 402 and reason(body) == "grant-not-yet-valid", body
    fields = metered.payment(500)
    top_up = {
        "beef": fields["x-bsv-beef"],
        "sender": fields["x-bsv-sender"],
        "nonce": fields["x-bsv-nonce"],
        "time": fields["x-bsv-time"],
        "vout": 0,
        "method": "GET",
        "url": "/util/calls/4",
        "tab": ahead,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{metered.base}{urls.PAY}", json=top_up) as resp,
    ):
        assert resp.status == 402 and reason(await resp.read()) == "grant-not-yet-valid"
    assert len(metered.broadcaster.seen) == 1  # the opening top-up only
    assert await metered.store.balance(tab) == 990_000


# --- checkout tickets --------------------------------------------------------------------


async def test_checkout_ticket_from_a_clock_ahead_is_read(paid) -> None:
    other = Tokens(paid.tokens.ring)
    with clock(AHEAD, tokens_module, checkout_module):
        _, ticket = open_checkout(other, "archive", "/archive/pages/3", "GET", 25)
    status, _, body, _ = await fetch(paid.base + urls.CHECKOUT + ticket)
    assert status == 200 and json.loads(body) == {"status": "pending"}

    # A ticket that states its issue time as iat is read with the same leeway.
    checkout = read_ticket(paid.tokens, ticket)
    assert checkout is not None
    claims = jwt.decode(ticket, options={"verify_signature": False})
    claims["iat"] = int(time.time()) + AHEAD
    del claims["iss"], claims["aud"]
    with_iat = other.sign_claims(claims, AUDIENCE)
    assert read_ticket(paid.tokens, with_iat) == checkout
    status, _, body, _ = await fetch(paid.base + urls.CHECKOUT + with_iat)
    assert status == 200 and json.loads(body) == {"status": "pending"}

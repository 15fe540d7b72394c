"""The nginx auth_request answer: may this request go upstream? (nginx itself: test_nginx.py)"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from gateway.payments.cashier import Cashier
from gateway.store.memory import MemoryStore
from gateway.tokens import Grant, KeyRing, Tokens
from tests.chainkit import Tracker
from tests.conftest import PAID_POLICY, PAID_SERVER
from tests.test_paid_access import FakeBroadcaster, brc121

AUTH = "/.well-known/farebox/auth"


@pytest.fixture
async def setup(gateway, upstream, tmp_path: Path):
    from types import SimpleNamespace

    tracker, broadcaster, store = Tracker(), FakeBroadcaster(), MemoryStore()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    cashier = Cashier(
        PAID_SERVER, tracker=tracker, broadcaster=broadcaster, store=store, tokens=tokens
    )
    base = await gateway(
        PAID_POLICY.format(upstream=upstream.url),
        server_key=PAID_SERVER.public_key().hex(),
        tokens=tokens,
        cashier=cashier,
        store=store,
    )
    return SimpleNamespace(base=base, tracker=tracker, broadcaster=broadcaster, tokens=tokens)


async def ask(base: str, uri: str, headers: dict[str, str] | None = None, method: str = "GET"):
    sent = {"X-Original-URI": uri, "X-Original-Method": method}
    sent.update({k: v for k, v in (headers or {}).items() if not k.startswith("_")})
    async with aiohttp.ClientSession() as http, http.get(base + AUTH, headers=sent) as r:
        return r.status, dict(r.headers)


async def test_free_paid_unpaid_and_replayed(setup, upstream) -> None:
    assert (await ask(setup.base, "/archive/about"))[0] == 204
    status, headers = await ask(setup.base, "/archive/pages/1")
    assert status == 401 and headers["x-bsv-sats"] == "25"  # nginx then asks Farebox itself

    payment = brc121(setup, 25)
    status, headers = await ask(setup.base, "/archive/pages/1", payment)
    assert status == 204
    token = headers["X-Farebox-Token"]
    assert "farebox_token=" in headers["Set-Cookie"] and headers["X-Farebox-Grant"]
    # The same payment again for the same page: the same grant, not a second charge.
    status, again = await ask(setup.base, "/archive/pages/1", payment)
    assert status == 204 and again["X-Farebox-Token"] == token
    assert len(setup.broadcaster.seen) == 1
    # ...but not for another page.
    assert (await ask(setup.base, "/archive/pages/2", payment))[0] == 401
    # The token opens the page; the upstream was never asked by Farebox.
    status, headers = await ask(
        setup.base, "/archive/pages/1", {"Authorization": f"Bearer {token}"}
    )
    assert status == 204 and headers["X-Farebox-Grant"]
    assert upstream.seen == []


async def test_unknown_paths_and_own_paths(setup) -> None:
    assert (await ask(setup.base, "/nowhere"))[0] == 401  # Farebox answers the 404 itself
    assert (await ask(setup.base, "/.well-known/farebox/pay"))[0] == 403
    assert (await ask(setup.base, "/archive/pages/%2F"))[0] == 401  # refused path: Farebox says why
    async with aiohttp.ClientSession() as http, http.get(setup.base + AUTH) as r:
        assert r.status == 400


def minted(tokens: Tokens, path: str, lasts: int) -> str:
    """A token for GET `path` of the archive service, valid for `lasts` seconds."""
    grant = Grant(
        id=uuid.uuid4().hex,
        service="archive",
        scope=path,
        covers="resource",
        methods=("GET", "HEAD"),
        expires=int(time.time()) + lasts,
        txid="00" * 32,
        satoshis=25,
        payer="ab" * 16,
    )
    return tokens.mint(grant)


async def test_what_nginx_may_keep(setup) -> None:
    """X-Accel-Expires (nginx's decision cache) only on answers that depend on
    nothing but the method, host, URI and credentials, and change nothing."""
    status, headers = await ask(setup.base, "/archive/about")
    assert status == 204 and headers["X-Accel-Expires"] == "1"  # free, no quota
    status, headers = await ask(setup.base, "/archive/pages/1")
    assert status == 401 and "X-Accel-Expires" not in headers  # a refusal: never

    payment = brc121(setup, 25)
    for _ in range(2):  # taken, then answered again from its claim: never kept
        status, headers = await ask(setup.base, "/archive/pages/1", payment)
        assert status == 204 and headers["X-Farebox-Token"]
        assert "X-Accel-Expires" not in headers
    token = headers["X-Farebox-Token"]
    bearer = {"Authorization": f"Bearer {token}"}
    status, headers = await ask(setup.base, "/archive/pages/1", bearer)
    assert status == 204 and headers["X-Accel-Expires"] == "1"
    status, headers = await ask(
        setup.base, "/archive/pages/1", {"Cookie": f"farebox_token={token}"}
    )
    assert status == 204 and headers["X-Accel-Expires"] == "1"
    # The token beside a payment header, or a concession's proof: answered, not kept.
    for extra in ({"x-bsv-vout": "0"}, {"PAYMENT-SIGNATURE": "x"}, {"X-Farebox-Eligibility": "e"}):
        status, headers = await ask(setup.base, "/archive/pages/1", {**bearer, **extra})
        assert status == 204 and "X-Accel-Expires" not in headers, extra
    assert (await ask(setup.base, "/archive/pages/2", bearer))[0] == 401

    # A token about to expire: nginx might keep a yes past its exp (it counts
    # whole seconds), so it is not kept at all.
    short = {"Authorization": f"Bearer {minted(setup.tokens, '/archive/pages/3', 2)}"}
    status, headers = await ask(setup.base, "/archive/pages/3", short)
    assert status == 204 and "X-Accel-Expires" not in headers
    long = {"Authorization": f"Bearer {minted(setup.tokens, '/archive/pages/3', 3600)}"}
    status, headers = await ask(setup.base, "/archive/pages/3", long)
    assert status == 204 and headers["X-Accel-Expires"] == "1"

"""One intake, one admission: every way a payment arrives is judged the same.

A payment reaches Farebox three ways:

- (H) BRC-121 headers on the priced request itself (x-bsv-beef, -sender,
  -nonce, -time, -vout);
- (B) `POST /.well-known/farebox/pay`: JSON {url, method, beef, sender,
  nonce, time, vout, tab?}, or the raw BEEF (application/octet-stream) with
  the rest in the query;
- (C) the checkout of the paywall page: the BEEF POSTed (bytes or hex) to
  `/.well-known/farebox/checkout/<ticket>`, whose GET is the page's status.

These tests pin what a client (and the upstream) observe whichever way the
money came: a revoked grant or tab is not bought back by resending its
payment, one payment buys one route, outages of the chain or the store are
`503` problems with `Retry-After` (never a 500), and malformed input is a
4xx problem naming what was wrong. A real gateway, a real recording
upstream and real signed transactions (test tracker, fake broadcaster).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import inspect
import json
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from bsv import PrivateKey
from multidict import CIMultiDict

from gateway.chain import ChainError
from gateway.chain.arc import ArcBroadcaster
from gateway.chain.headers import BlockHeadersTracker
from gateway.payments.cashier import Cashier
from gateway.pipeline.credentials import Revocations
from gateway.store import StoreUnavailable
from gateway.store.memory import MemoryStore
from gateway.tokens import KeyRing, Tokens
from tests.chainkit import Tracker, atomic_beef, funding, pay, spend
from tests.conftest import PAID_SERVER, GatewayFactory, Upstream
from tests.test_paid_access import FakeBroadcaster
from tests.test_paywall import BROWSER, checkout_of

CLIENT = PrivateKey(0x1_47A_CE)
PAY = "/.well-known/farebox/pay"
TAB = "/.well-known/farebox/tab"
PROBLEM = "application/problem+json"
REVOCATION_DELAY = 1.1  # the admin API promises a revocation is in force within 1 s
# (the gateway below caches revocation answers for 0.05 s only; the wait covers any cache)

POLICY = """\
services:
  archive:
    upstream: {upstream}
    mount: /archive
    routes:
      - path: /pages/{{n}}
        price: 25
        grant: {{lasts: 1h, covers: resource}}
      - path: /dual/{{id}}
        methods: [GET, HEAD]
        price: 25
        grant: {{lasts: 1h, covers: resource}}
      - path: /dual/{{id}}
        methods: [POST]
        price: 20
        grant: {{lasts: 1h, covers: resource}}
      - path: /**
        price: free
  util:
    upstream: {upstream}
    mount: /util
    tabs: {{top_up: 1000, lasts: 1d}}
    routes:
      - path: /calls/{{n}}
        price: 10
        meter: {{per: request}}
"""

# --- switchable chain services and store ---------------------------------------------------


class Switch:
    """A chain service that is `normal` until an `outage` stands in for it."""

    def __init__(self, normal: object) -> None:
        self.normal = normal
        self.outage: object | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.outage if self.outage is not None else self.normal, name)


class RaisingTracker:
    """A headers service that cannot say whether a merkle root is valid."""

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        raise ChainError("unreachable", "headers service: connection refused")

    async def current_height(self) -> int:
        raise ChainError("unreachable", "headers service: connection refused")


class RaisingBroadcaster:
    async def broadcast(self, tx: bytes | str, *, txid: str | None = None) -> object:
        raise ChainError("unreachable", "ARC: connection refused")


_STORE_OPERATIONS = frozenset(
    {
        "claim",
        "complete",
        "release",
        "receipt",
        "receipts",
        "credit",
        "reserve",
        "settle",
        "refund",
        "balance",
        "hit",
        "revoke",
        "revoked",
        "count",
        "stats",
        "ping",
    }
)


class SwitchableStore(MemoryStore):
    """The memory store, whose every operation raises StoreUnavailable while `down`."""

    down: bool = False

    def __getattribute__(self, name: str) -> Any:
        if name in _STORE_OPERATIONS and object.__getattribute__(self, "down"):

            async def unavailable(*args: object, **kwargs: object) -> Any:
                raise StoreUnavailable("connection refused")

            return unavailable
        return super().__getattribute__(name)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the gateway under test ---------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    def json(self) -> Any:
        return json.loads(self.body)

    def problem(self) -> dict[str, Any]:
        """The problem+json body; fails unless the answer is one."""
        assert self.content_type == PROBLEM, (self.status, self.content_type, self.body[:300])
        found = json.loads(self.body)
        assert isinstance(found, dict) and found.get("reason"), found
        return found

    def reason(self) -> str:
        return self.problem()["reason"]

    @property
    def token(self) -> str | None:
        return self.headers.get("X-Farebox-Token")

    def hands_out_nothing(self) -> None:
        """No token in a header, a cookie or the body."""
        assert "X-Farebox-Token" not in self.headers, self.headers
        assert not any("farebox_token=" in c for c in self.headers.getall("Set-Cookie", []))
        try:
            body = json.loads(self.body)
        except ValueError:
            body = None
        if isinstance(body, dict):
            assert "token" not in body, body


@dataclass
class Payment:
    """One signed payment of `satoshis` to the server, as BRC-121 fields."""

    headers: dict[str, str]
    txid: str

    def body(self, url: str, method: str = "GET", **extra: Any) -> dict[str, Any]:
        h = self.headers
        return {
            "beef": h["x-bsv-beef"],
            "sender": h["x-bsv-sender"],
            "nonce": h["x-bsv-nonce"],
            "time": h["x-bsv-time"],
            "vout": 0,
            "url": url,
            "method": method,
            **extra,
        }


@dataclass
class Env:
    base: str
    tracker: Tracker  # knows the merkle roots of the payments' funding
    chain: Switch  # the cashier's tracker
    broadcaster: Switch  # the cashier's broadcaster
    store: SwitchableStore
    upstream: Upstream
    cashier: Cashier
    closers: list[Any] = field(default_factory=list)

    def payment(self, satoshis: int, *, age: float = 0.0) -> Payment:
        """A payment made `age` seconds ago (its x-bsv-time)."""
        time_ms = int((time.time() - age) * 1000)
        nonce = base64.b64encode(os.urandom(9)).decode()
        suffix = base64.b64encode(str(time_ms).encode()).decode()
        p = pay(
            PAID_SERVER.public_key(), CLIENT, satoshis, self.tracker, prefix=nonce, suffix=suffix
        )
        headers = {
            "x-bsv-beef": base64.b64encode(atomic_beef(p.tx)).decode(),
            "x-bsv-sender": CLIENT.public_key().hex(),
            "x-bsv-nonce": nonce,
            "x-bsv-time": str(time_ms),
            "x-bsv-vout": "0",
        }
        return Payment(headers, p.tx.txid())

    def upstream_calls(self, method: str | None = None) -> int:
        return len([s for s in self.upstream.seen if method in (None, s.method)])

    def unreachable_tracker(self) -> BlockHeadersTracker:
        tracker = BlockHeadersTracker(f"http://127.0.0.1:{closed_port()}", timeout=2)
        self.closers.append(tracker)
        return tracker

    def unreachable_arc(self) -> ArcBroadcaster:
        arc = ArcBroadcaster(f"http://127.0.0.1:{closed_port()}", timeout=2)
        self.closers.append(arc)
        return arc


async def call(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | str | None = None,
    json_body: Any = None,
    params: dict[str, str] | None = None,
) -> Answer:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, data=data, json=json_body, params=params) as r,
    ):
        return Answer(r.status, r.headers.copy(), await r.read())


@pytest.fixture
async def env(gateway: GatewayFactory, upstream: Upstream, tmp_path: Path) -> AsyncIterator[Env]:
    store = SwitchableStore()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    tracker, fake = Tracker(), FakeBroadcaster()
    chain, broadcaster = Switch(tracker), Switch(fake)
    cashier = Cashier(
        PAID_SERVER, tracker=chain, broadcaster=broadcaster, store=store, tokens=tokens
    )  # type: ignore[arg-type]
    base = await gateway(
        POLICY.format(upstream=upstream.url),
        server_key=PAID_SERVER.public_key().hex(),
        tokens=tokens,
        cashier=cashier,
        cookie_secure=False,
        store=store,
        revocations=Revocations(store, ttl=0.05),
    )
    setup = Env(
        base=base,
        tracker=tracker,
        chain=chain,
        broadcaster=broadcaster,
        store=store,
        upstream=upstream,
        cashier=cashier,
    )
    yield setup
    for closer in setup.closers:
        await closer.close()


# --- the intakes ---------------------------------------------------------------------------


async def via_headers(env: Env, payment: Payment, path: str, method: str = "GET") -> Answer:
    """(H): the payment as BRC-121 headers on the priced request itself."""
    return await call(method, env.base + path, headers=payment.headers)


async def via_pay(env: Env, payment: Payment, path: str, method: str = "GET") -> Answer:
    """(B): the payment as JSON to the pay endpoint."""
    return await call("POST", env.base + PAY, json_body=payment.body(path, method))


async def via_pay_raw(env: Env, payment: Payment, path: str, method: str = "GET") -> Answer:
    """(B): the raw BEEF to the pay endpoint, the rest in the query."""
    h = payment.headers
    query = {
        "sender": h["x-bsv-sender"],
        "nonce": h["x-bsv-nonce"],
        "time": h["x-bsv-time"],
        "vout": "0",
        "url": path,
        "method": method,
    }
    return await call(
        "POST",
        env.base + PAY,
        data=base64.b64decode(h["x-bsv-beef"]),
        params=query,
        headers={"Content-Type": "application/octet-stream"},
    )


INTAKES = {"headers": via_headers, "pay": via_pay, "pay-raw": via_pay_raw}


@dataclass
class Checkout:
    url: str  # the checkout's URL: POST the BEEF, GET the status
    address: str
    satoshis: int


async def open_checkout(env: Env, path: str) -> Checkout:
    """(C): what a browser gets for a priced URL: the paywall page and its checkout."""
    page = await call("GET", env.base + path, headers={"Accept": BROWSER})
    assert page.status == 402 and page.content_type == "text/html", page.status
    status_path, address, satoshis = checkout_of(page.body.decode())
    return Checkout(env.base + status_path, address, satoshis)


def checkout_beef(env: Env, checkout: Checkout) -> tuple[bytes, str]:
    """A phone wallet's transaction paying the checkout's address: (Atomic BEEF, txid)."""
    paid = checkout.satoshis
    parent = funding(CLIENT, 20_000, env.tracker)
    tx = spend(parent, 0, CLIENT, [(checkout.address, paid), (CLIENT.public_key(), 18_000)])
    return atomic_beef(tx), tx.txid()


async def revoke(env: Env, what: str) -> None:
    """Revoke a grant (its token's jti) or a tab (its id) as the admin API does, and
    wait until the revocation is in force everywhere."""
    await env.store.revoke(what, int(time.time()) + 86400)
    await asyncio.sleep(REVOCATION_DELAY)


def grant_id(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["jti"]


async def tab_of(env: Env, token: str) -> str:
    """The tab a tab token draws on, as the gateway tells its holder."""
    answer = await call("GET", env.base + TAB, headers={"Authorization": f"Bearer {token}"})
    assert answer.status == 200, answer.body
    return answer.json()["tab"]


def assert_retry_after(answer: Answer) -> None:
    retry = answer.headers.get("Retry-After")
    assert retry, f"no Retry-After on a {answer.status}: {dict(answer.headers)}"
    assert retry.isdigit() or email.utils.parsedate_to_datetime(retry) is not None, retry


def assert_unavailable(answer: Answer, reason: str) -> None:
    assert answer.status == 503, (answer.status, answer.body[:300])
    assert answer.reason() == reason
    assert_retry_after(answer)
    answer.hands_out_nothing()


# === 1. a revoked grant or tab is not bought back by resending its payment ==================

CROSSINGS = [
    ("headers", "headers"),
    ("pay", "pay"),
    ("pay-raw", "pay-raw"),
    ("headers", "pay"),
    ("pay", "headers"),
]


@pytest.mark.parametrize(
    ("bought", "resent"), CROSSINGS, ids=[f"{a}-then-{b}" for a, b in CROSSINGS]
)
async def test_resending_the_payment_of_a_revoked_grant_is_refused(
    env: Env, bought: str, resent: str
) -> None:
    path = "/archive/pages/1"
    payment = env.payment(25)
    first = await INTAKES[bought](env, payment, path)
    assert first.status == 200, first.body
    assert first.token is not None
    await revoke(env, grant_id(first.token))

    served = env.upstream_calls()
    again = await INTAKES[resent](env, payment, path)
    assert again.status == 402, (again.status, again.body[:300])
    assert again.reason() == "grant-revoked"
    again.hands_out_nothing()
    assert env.upstream_calls() == served  # the resend reached nothing

    # However often it is sent.
    again = await INTAKES[resent](env, payment, path)
    assert again.status == 402 and again.reason() == "grant-revoked"
    assert env.upstream_calls() == served


async def test_reposting_to_the_checkout_of_a_revoked_grant_is_refused(env: Env) -> None:
    checkout = await open_checkout(env, "/archive/pages/2")
    beef, _ = checkout_beef(env, checkout)
    paid = await call("POST", checkout.url, data=beef)
    assert paid.status == 200 and paid.json()["status"] == "paid", paid.body
    assert paid.token is not None
    await revoke(env, grant_id(paid.token))

    for sent in (beef, beef.hex()):  # bytes or hex: the same transaction
        again = await call("POST", checkout.url, data=sent)
        assert again.status == 402, (again.status, again.body[:300])
        assert again.reason() == "grant-revoked"
        again.hands_out_nothing()

    # The page's poll must not hand the grant out either.
    status = await call("GET", checkout.url)
    status.hands_out_nothing()
    if status.status == 200:
        body = status.json()
        assert body.get("status") == "refused" and body.get("reason") == "grant-revoked", body
    else:
        assert status.status == 402 and status.reason() == "grant-revoked", status.body
    assert env.upstream_calls() == 0


@pytest.mark.parametrize(
    ("opened", "resent"), CROSSINGS, ids=[f"{a}-then-{b}" for a, b in CROSSINGS]
)
async def test_resending_the_opening_payment_of_a_revoked_tab_is_refused(
    env: Env, opened: str, resent: str
) -> None:
    payment = env.payment(1000)
    first = await INTAKES[opened](env, payment, "/util/calls/1")
    assert first.status == 200, first.body
    assert first.token is not None
    tab = await tab_of(env, first.token)
    await revoke(env, tab)

    served = env.upstream_calls()
    again = await INTAKES[resent](env, payment, "/util/calls/2")
    assert again.status == 402, (again.status, again.body[:300])
    assert again.reason() == "grant-revoked"
    again.hands_out_nothing()
    assert env.upstream_calls() == served  # no metered request went through


async def test_reposting_to_the_checkout_of_a_revoked_tab_is_refused(env: Env) -> None:
    checkout = await open_checkout(env, "/util/calls/3")
    assert checkout.satoshis == 1000
    beef, _ = checkout_beef(env, checkout)
    paid = await call("POST", checkout.url, data=beef)
    assert paid.status == 200 and paid.json()["status"] == "paid", paid.body
    assert paid.token is not None
    await revoke(env, await tab_of(env, paid.token))

    again = await call("POST", checkout.url, data=beef)
    assert again.status == 402, (again.status, again.body[:300])
    assert again.reason() == "grant-revoked"
    again.hands_out_nothing()
    status = await call("GET", checkout.url)
    status.hands_out_nothing()
    if status.status == 200:
        body = status.json()
        assert body.get("status") == "refused" and body.get("reason") == "grant-revoked", body
    else:
        assert status.status == 402 and status.reason() == "grant-revoked", status.body


# === 2. one payment buys one route ==========================================================

DIRECTIONS = [("GET", "POST"), ("POST", "GET")]


@pytest.mark.parametrize("intake", list(INTAKES))
@pytest.mark.parametrize(("bought", "other"), DIRECTIONS, ids=["GET-then-POST", "POST-then-GET"])
async def test_one_payment_does_not_buy_a_second_route_on_the_same_path(
    env: Env, intake: str, bought: str, other: str
) -> None:
    # /archive/dual/{id} is two priced routes: GET/HEAD for 25, POST for 20.
    # A payment of 25 covers either price, but buys only the one it was sent for.
    send = INTAKES[intake]
    path = "/archive/dual/1"
    payment = env.payment(25)
    first = await send(env, payment, path, bought)
    assert first.status == 200, first.body
    reached = env.upstream_calls(other)

    for _ in range(2):
        reused = await send(env, payment, path, other)
        assert reused.status == 402, (reused.status, reused.body[:300])
        assert reused.reason() == "payment-reused"
        reused.hands_out_nothing()
        assert env.upstream_calls(other) == reached  # the other route was never served

    # The purchase itself is still answered idempotently: the same grant.
    again = await send(env, payment, path, bought)
    assert again.status == 200, again.body
    assert again.token == first.token


# === 3. outages: 503 with a reason and Retry-After, and the payment may be sent again ========

CHAIN_OUTAGES = [
    "tracker-raises",
    "headers-service-unreachable",
    "broadcaster-raises",
    "arc-unreachable",
]


def break_chain(env: Env, outage: str) -> None:
    if outage == "tracker-raises":
        env.chain.outage = RaisingTracker()
    elif outage == "headers-service-unreachable":
        env.chain.outage = env.unreachable_tracker()
    elif outage == "broadcaster-raises":
        env.broadcaster.outage = RaisingBroadcaster()
    else:
        env.broadcaster.outage = env.unreachable_arc()


def mend_chain(env: Env) -> None:
    env.chain.outage = None
    env.broadcaster.outage = None


@pytest.mark.parametrize("outage", CHAIN_OUTAGES)
@pytest.mark.parametrize("intake", list(INTAKES))
async def test_chain_outage_is_503_chain_unavailable(env: Env, intake: str, outage: str) -> None:
    payment = env.payment(25)
    break_chain(env, outage)
    answer = await INTAKES[intake](env, payment, "/archive/pages/3")
    assert_unavailable(answer, "chain-unavailable")
    assert env.upstream_calls() == 0

    mend_chain(env)  # the same payment, sent again, is taken
    answer = await INTAKES[intake](env, payment, "/archive/pages/3")
    assert answer.status == 200, answer.body
    assert answer.token is not None
    if intake != "headers":
        assert answer.json()["receipt"]["txid"] == payment.txid


@pytest.mark.parametrize("outage", ["tracker-raises", "broadcaster-raises"])
@pytest.mark.parametrize("intake", list(INTAKES))
async def test_chain_outage_on_a_tab_top_up_is_503_chain_unavailable(
    env: Env, intake: str, outage: str
) -> None:
    payment = env.payment(1000)
    break_chain(env, outage)
    answer = await INTAKES[intake](env, payment, "/util/calls/4")
    assert_unavailable(answer, "chain-unavailable")
    assert env.upstream_calls() == 0
    mend_chain(env)
    answer = await INTAKES[intake](env, payment, "/util/calls/4")
    assert answer.status == 200, answer.body


@pytest.mark.parametrize("outage", CHAIN_OUTAGES)
@pytest.mark.parametrize("path", ["/archive/pages/4", "/util/calls/5"], ids=["grant", "tab"])
async def test_chain_outage_at_the_checkout_is_503_chain_unavailable(
    env: Env, path: str, outage: str
) -> None:
    checkout = await open_checkout(env, path)
    beef, txid = checkout_beef(env, checkout)
    break_chain(env, outage)
    answer = await call("POST", checkout.url, data=beef)
    assert_unavailable(answer, "chain-unavailable")

    mend_chain(env)
    answer = await call("POST", checkout.url, data=beef)
    assert answer.status == 200, answer.body
    assert answer.json()["status"] == "paid" and answer.json()["txid"] == txid


@pytest.mark.parametrize("intake", list(INTAKES))
@pytest.mark.parametrize("path", ["/archive/pages/5", "/util/calls/6"], ids=["grant", "tab"])
async def test_store_outage_is_503_store_unavailable(env: Env, intake: str, path: str) -> None:
    payment = env.payment(1000 if path.startswith("/util") else 25)
    env.store.down = True
    answer = await INTAKES[intake](env, payment, path)
    assert_unavailable(answer, "store-unavailable")
    assert env.upstream_calls() == 0

    env.store.down = False  # the same payment, sent again, is taken
    answer = await INTAKES[intake](env, payment, path)
    assert answer.status == 200, answer.body


@pytest.mark.parametrize("path", ["/archive/pages/6", "/util/calls/7"], ids=["grant", "tab"])
async def test_store_outage_at_the_checkout_is_503_store_unavailable(env: Env, path: str) -> None:
    checkout = await open_checkout(env, path)
    beef, _ = checkout_beef(env, checkout)
    env.store.down = True
    answer = await call("POST", checkout.url, data=beef)
    assert_unavailable(answer, "store-unavailable")
    status = await call("GET", checkout.url)
    assert_unavailable(status, "store-unavailable")

    env.store.down = False
    answer = await call("POST", checkout.url, data=beef)
    assert answer.status == 200 and answer.json()["status"] == "paid", answer.body
    status = await call("GET", checkout.url)
    assert status.status == 200 and status.json()["status"] == "paid", status.body


async def test_store_outage_at_a_checkout_status_is_503_store_unavailable(env: Env) -> None:
    checkout = await open_checkout(env, "/archive/pages/7")
    env.store.down = True
    status = await call("GET", checkout.url)
    assert_unavailable(status, "store-unavailable")
    env.store.down = False
    status = await call("GET", checkout.url)
    assert status.status == 200 and status.json()["status"] == "pending", status.body


# === 4. malformed input: a 4xx problem naming what is wrong, never a 500 ======================

MISTYPED = [
    ("nonce", 12345),
    ("sender", []),
    ("beef", 7),
    ("vout", "x"),
    ("vout", []),
    ("vout", -1),
    ("time", {}),
    ("url", 5),
    ("method", []),
    ("tab", 5),
]


@pytest.mark.parametrize(
    ("name", "value"), MISTYPED, ids=[f"{n}={json.dumps(v)}" for n, v in MISTYPED]
)
async def test_a_mistyped_pay_field_is_400_naming_the_field(
    env: Env, name: str, value: Any
) -> None:
    metered = name == "tab"
    payment = env.payment(1000 if metered else 25)
    path = "/util/calls/8" if metered else "/archive/pages/8"
    body = payment.body(path, "GET")
    body[name] = value
    answer = await call("POST", env.base + PAY, json_body=body)
    assert answer.status == 400, (answer.status, answer.body[:300])
    problem = answer.problem()
    assert name in problem.get("detail", ""), problem
    answer.hands_out_nothing()

    # The refusal took nothing: the payment, sent properly, is good.
    answer = await call("POST", env.base + PAY, json_body=payment.body(path, "GET"))
    assert answer.status == 200, answer.body


@pytest.mark.parametrize(
    "body",
    [b"[]", b'[{"url": "/archive/pages/1"}]', b'"a string"', b"42", b"null", b"\xff\xfe{\x00", b""],
    ids=["array", "array-of-object", "string", "number", "null", "invalid-utf8", "empty"],
)
async def test_a_pay_body_that_is_not_a_json_object_is_400(env: Env, body: bytes) -> None:
    answer = await call(
        "POST", env.base + PAY, data=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 400, (answer.status, answer.body[:300])
    answer.problem()


async def test_an_empty_raw_beef_is_400(env: Env) -> None:
    payment = env.payment(25)
    h = payment.headers
    query = {
        "sender": h["x-bsv-sender"],
        "nonce": h["x-bsv-nonce"],
        "time": h["x-bsv-time"],
        "vout": "0",
        "url": "/archive/pages/9",
    }
    answer = await call(
        "POST",
        env.base + PAY,
        data=b"",
        params=query,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert answer.status == 400, (answer.status, answer.body[:300])
    answer.problem()


GARBLED = [
    ("x-bsv-beef", "!!! not base64 !!!"),
    ("x-bsv-beef", "AAAA"),
    ("x-bsv-sender", "not-a-key"),
    ("x-bsv-sender", "02" + "zz" * 32),
    ("x-bsv-time", "yesterday"),
    ("x-bsv-time", "-1"),
    ("x-bsv-time", "9" * 40),
    ("x-bsv-vout", "first"),
    ("x-bsv-vout", "-1"),
    ("x-bsv-vout", "9" * 30),
    ("x-bsv-nonce", "not base64!"),
]


@pytest.mark.parametrize(("name", "value"), GARBLED, ids=[f"{n}={v[:12]}" for n, v in GARBLED])
async def test_a_garbled_payment_header_is_a_4xx_problem(env: Env, name: str, value: str) -> None:
    payment = env.payment(25)
    headers = {**payment.headers, name: value}
    answer = await call("GET", env.base + "/archive/pages/10", headers=headers)
    assert answer.status in (400, 402, 413), (answer.status, answer.body[:300])
    answer.problem()
    answer.hands_out_nothing()
    assert env.upstream_calls() == 0

    answer = await via_headers(env, payment, "/archive/pages/10")
    assert answer.status == 200, answer.body  # the refusal took nothing


async def raw_get(base: str, path: str, headers: list[tuple[str, bytes]]) -> Answer:
    """A GET whose header values are sent byte for byte (clients would refuse non-ASCII)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [f"GET {path} HTTP/1.1".encode(), f"Host: {host}".encode()]
        lines += [name.encode() + b": " + value for name, value in headers]
        lines += [b"Connection: close", b"", b""]
        writer.write(b"\r\n".join(lines))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        key, _, value = line.partition(":")
        found.add(key.strip(), value.strip())
    return Answer(int(status_line.split(" ", 2)[1]), found, body)


NON_ASCII = [
    (name, raw)
    for name in ("x-bsv-beef", "x-bsv-sender", "x-bsv-nonce", "x-bsv-time", "x-bsv-vout")
    for raw in ("wärme-½".encode(), b"\xff\xfe\x80")
]


@pytest.mark.parametrize(
    ("name", "raw"),
    NON_ASCII,
    ids=[f"{n}-{'utf8' if r[0] == 119 else 'bytes'}" for n, r in NON_ASCII],
)
async def test_a_non_ascii_payment_header_is_a_4xx_problem(env: Env, name: str, raw: bytes) -> None:
    payment = env.payment(25)
    headers = [(k, raw if k == name else v.encode()) for k, v in payment.headers.items()]
    answer = await raw_get(env.base, "/archive/pages/11", headers)
    assert answer.status in (400, 402), (answer.status, answer.body[:300])
    answer.problem()
    assert env.upstream_calls() == 0


@pytest.mark.parametrize(
    "kind", ["empty", "blank", "not-hex-text", "truncated-beef", "truncated-hex", "odd-hex", "2MB"]
)
async def test_a_malformed_checkout_post_is_a_4xx_problem(env: Env, kind: str) -> None:
    checkout = await open_checkout(env, "/archive/pages/12")
    beef, _ = checkout_beef(env, checkout)
    body = {
        "empty": b"",
        "blank": b"  \r\n",
        "not-hex-text": b"hello wallet, this is not a transaction",
        "truncated-beef": beef[: len(beef) // 2],
        "truncated-hex": beef.hex()[: len(beef)],
        "odd-hex": beef.hex()[:-1],
        "2MB": os.urandom(2 * 1024 * 1024 + 16),
    }[kind]
    answer = await call("POST", checkout.url, data=body)
    assert answer.status in (400, 413), (answer.status, answer.body[:300])
    answer.problem()
    answer.hands_out_nothing()

    answer = await call("POST", checkout.url, data=beef)  # the refusal took nothing
    assert answer.status == 200 and answer.json()["status"] == "paid", answer.body


# === 5. a fuzz guard on the pay endpoint =======================================================

FIELDS = ("url", "method", "beef", "sender", "nonce", "time", "vout", "tab")


def random_value(rng: random.Random, real: dict[str, Any], name: str, depth: int = 0) -> Any:
    kinds = ["none", "bool", "int", "float", "string", "unicode", "surrogate", "long", "real"]
    if depth < 2:
        kinds += ["list", "object"]
    kind = rng.choice(kinds)
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 2**31, 2**64 + 1, -(2**70), rng.randint(-1000, 10**9)])
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e308, 3.0, float("nan"), float("inf")])
    if kind == "string":
        alphabet = "abcXYZ0123456789+/=-_%.:/ "
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
    if kind == "unicode":
        return rng.choice(
            ["ü", "数据", "/archive/pagés/1", "\u0000", "\u202e", "\U0001d518\U0001d52b"]
        )
    if kind == "surrogate":
        return rng.choice(["\ud800", "x\udfffy"])
    if kind == "long":
        return "A" * rng.choice([200, 5000])
    if kind == "real":
        return real[name]
    if kind == "list":
        return [random_value(rng, real, name, depth + 1) for _ in range(rng.randint(0, 3))]
    return {n: random_value(rng, real, n, depth + 1) for n in rng.sample(FIELDS, 2)}


async def test_random_pay_bodies_never_get_a_500(env: Env) -> None:
    rng = random.Random(0xFA4E)
    payments = [env.payment(25), env.payment(1000)]
    reals = [
        {**p.body(path, "GET"), "tab": "not-a-tab-token"}
        for p, path in ((payments[0], "/archive/pages/13"), (payments[1], "/util/calls/9"))
    ]
    reals.append({**reals[0], "url": "/archive/dual/2", "method": "POST"})
    async with aiohttp.ClientSession() as http:
        for example in range(100):
            real = rng.choice(reals)
            body = {name: random_value(rng, real, name) for name in FIELDS if rng.random() < 0.8}
            if rng.random() < 0.1:
                body["unexpected"] = random_value(rng, real, "url")
            # allow_nan: Python's json reads NaN and Infinity, so the gateway may meet them.
            data = json.dumps(body, allow_nan=True).encode()
            async with http.post(
                env.base + PAY, data=data, headers={"Content-Type": "application/json"}
            ) as r:
                answer = Answer(r.status, r.headers.copy(), await r.read())
            assert answer.status < 500, (example, body, answer.status, answer.body[:300])
            if answer.status >= 400:
                assert answer.content_type == PROBLEM, (example, body, answer.body[:300])
                assert json.loads(answer.body).get("reason"), (example, body, answer.body[:300])


# --- unknown outcomes: a payment sent again is the same payment ---------------------------


class TakenThenTimedOut:
    """ARC took the transaction, but its answer never came (once)."""

    def __init__(self, inner: FakeBroadcaster) -> None:
        self.inner, self.failures = inner, 1

    async def broadcast(self, tx: bytes, *, txid: str | None = None) -> object:
        if self.failures:
            self.failures -= 1
            self.inner.seen.append(tx)
            raise ChainError("timeout", "POST /v1/tx: no answer in time")
        return await self.inner.broadcast(tx, txid=txid)


@pytest.mark.parametrize("intake", ["headers", "pay"])
async def test_a_payment_sent_again_after_an_unknown_broadcast_is_taken_however_late(
    env: Env, intake: str
) -> None:
    # Money rule 6: "503, send the same payment again" must not turn into
    # "402 stale-time" because the retry came after the freshness window.
    env.cashier.time_window = 1.0
    env.broadcaster.outage = TakenThenTimedOut(env.broadcaster.normal)
    payment = env.payment(25)
    first = await INTAKES[intake](env, payment, "/archive/pages/21")
    assert_unavailable(first, "chain-unavailable")
    await asyncio.sleep(1.5)
    again = await INTAKES[intake](env, payment, "/archive/pages/21")
    assert again.status == 200, again.body[:300]
    assert await env.store.receipt(payment.txid) is not None


async def test_a_stale_payment_is_still_refused_when_it_was_never_seen_fresh(env: Env) -> None:
    env.cashier.time_window = 1.0
    answer = await via_headers(env, env.payment(25, age=5), "/archive/pages/22")
    assert answer.status == 402 and answer.reason() == "stale-time"
    answer.hands_out_nothing()


def test_a_concurrent_resend_waits_longer_than_any_broadcast_before_taking_over() -> None:
    # A resend takes over a claim only when its owner must have died: the wait
    # has to outlast the slowest broadcast (ARC: two requests of `timeout`).
    settle = inspect.signature(Cashier).parameters["settle_wait"].default
    arc_timeout = inspect.signature(ArcBroadcaster).parameters["timeout"].default
    assert settle > 2 * arc_timeout


class CrashingBroadcaster:
    async def broadcast(self, tx: bytes, *, txid: str | None = None) -> object:
        raise aiohttp.ClientError("connection reset by peer")


class CrashingTracker:
    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        raise ValueError("unexpected answer from the headers service")


@pytest.mark.parametrize("intake", ["headers", "pay"])
async def test_a_chain_client_failing_its_own_way_is_503_chain_unavailable(
    env: Env, intake: str
) -> None:
    for service, outage in (
        (env.broadcaster, CrashingBroadcaster()),
        (env.chain, CrashingTracker()),
    ):
        service.outage = outage
        answer = await INTAKES[intake](env, env.payment(25), "/archive/pages/23")
        assert_unavailable(answer, "chain-unavailable")
        service.outage = None


async def test_a_checkout_stays_open_after_a_broadcast_failed_its_own_way(env: Env) -> None:
    checkout = await open_checkout(env, "/archive/pages/24")
    env.broadcaster.outage = CrashingBroadcaster()
    first, _ = checkout_beef(env, checkout)
    assert_unavailable(await call("POST", checkout.url, data=first), "chain-unavailable")
    env.broadcaster.outage = None
    second, _ = checkout_beef(env, checkout)  # the wallet builds a new transaction
    answer = await call("POST", checkout.url, data=second)
    assert answer.status == 200 and answer.json()["status"] == "paid", answer.body[:300]


# --- odd encodings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/archive/pages/25", "/util/calls/1", TAB, "/.well-known/farebox/receipts/" + "0" * 64]
)
async def test_a_bearer_token_that_is_not_utf8_is_refused_without_a_500(
    env: Env, path: str
) -> None:
    answer = await raw_get(env.base, path, [("Authorization", b"Bearer \xff\xfe")])
    assert 400 <= answer.status < 500, answer.body[:300]
    answer.hands_out_nothing()


async def test_a_pay_url_with_a_lone_surrogate_is_400(env: Env) -> None:
    answer = await call(
        "POST",
        env.base + PAY,
        data=b'{"url": "/archive/pages/\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert answer.status == 400 and answer.reason() == "invalid-utf8"


async def test_a_pay_body_that_arrives_in_pieces_is_read_whole(env: Env) -> None:
    body = json.dumps(env.payment(25).body("/archive/pages/31")).encode()
    address, port = env.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(address, int(port))
    writer.write(
        f"POST {PAY} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body[:100]
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the rest of the body comes in another segment
    writer.write(body[100:])
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert data.split(b" ", 2)[1] == b"200", data[:400]

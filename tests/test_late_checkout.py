"""Late phone payments to a paywall checkout: found, recorded once, delivered or listed, swept.

A phone wallet that broadcasts its checkout payment itself, just as (or after)
the checkout expires, used to be lost: no receipt, nothing delivered, nothing
`farebox sweep` could spend. Real parts throughout: a devnet served over HTTP
(its ARC, headers and WhatsOnChain-style paths), real signed transactions
broadcast straight to it as a phone wallet does, a real redis-server the
test starts, real gateways (in process, and `farebox serve` processes), the
real sweep.

The checkouts here are real tickets signed with the gateway's token keys,
only shorter-lived than the page's ten minutes, so that tests need not wait.
Each is polled once before it expires, as every paywall page does a second
after it loads: that is what puts a checkout on the watch list.

Names the late watch added are imported where used, so that this module also
runs against the code before it (the `farebox serve` test then fails).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from bsv import PrivateKey, PublicKey, Transaction

from gateway.chain.arc import ArcBroadcaster
from gateway.chain.headers import DevnetTracker
from gateway.chain.local import LocalBroadcaster
from gateway.chain.watch import WocWatcher
from gateway.custody.sweep import DevnetUtxos, StoreReceipts, sweep
from gateway.devnet import Devnet
from gateway.payments.cashier import Cashier
from gateway.payments.checkout import ANYONE_HEX, Checkout, payee, read_ticket, suffix
from gateway.pipeline.credentials import Revocations
from gateway.policy.reload import PolicyHolder
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import assemble_gateway
from gateway.services import Services
from gateway.store.memory import MemoryStore
from gateway.store.receipts import Receipt
from gateway.store.redis import RedisStore
from gateway.tokens import KeyRing, Tokens
from tests.chainkit import spend
from tests.conftest import PAID_POLICY, PAID_SERVER, Upstream
from tests.farebox_process import Running, run, serve
from tests.redis_servers import Cluster, RedisServer, need_redis, running

ADMIN_TOKEN = "admin-token-for-late-checkouts-0123"
PRICE = 25  # PAID_POLICY's /archive/pages/{n}
CHECKOUT_URL = "/.well-known/farebox/checkout/"


# --- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    with running(server):
        yield server


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    need_redis()
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    with running(cluster):
        yield cluster


def fresh_prefix() -> str:
    return f"t{secrets.token_hex(4)}:"


# --- checkouts and phone wallets ---------------------------------------------------------------


def short_checkout(
    tokens: Tokens, resource: str, lasts: int, sats: int = PRICE
) -> tuple[str, Checkout]:
    """A real checkout ticket (as the paywall page's) that expires in `lasts` seconds."""
    now = time.time()
    claims = {
        "jti": base64.b64encode(os.urandom(12)).decode(),
        "svc": "archive",
        "res": resource,
        "m": "GET",
        "sats": sats,
        "iat_ms": int(now * 1000),
        "exp": int(now) + lasts,
    }
    ticket = tokens.sign_claims(claims, "farebox:checkout")
    checkout = read_ticket(tokens, ticket)
    assert checkout is not None
    return ticket, checkout


def address_of(checkout: Checkout) -> str:
    return payee(PAID_SERVER.public_key(), checkout).address()


def phone_pays(chain: Devnet, address: str, sats: int) -> Transaction:
    """A phone wallet pays `address` and broadcasts the transaction itself."""
    phone = PrivateKey()
    parent = chain.faucet(phone.address(), sats + 10_000)
    tx = spend(parent, 0, phone, [(address, sats), (phone.public_key(), 9_999)])
    assert chain.submit(tx).accepted
    return tx


async def expire(checkout: Checkout, after: float = 0.3) -> None:
    await asyncio.sleep(max(0.0, checkout.expires - time.time()) + after)


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := await check():
            return found
        await asyncio.sleep(0.25)
    raise AssertionError(f"not within {timeout} s: {what}")


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


# --- a gateway in this process, on the devnet over HTTP and a real Redis -------------------------


@dataclass
class Counting:
    """A payment watcher that remembers every script it was asked about."""

    inner: Any
    asked: list[bytes] = field(default_factory=list)

    async def payments_to(self, script: bytes) -> list[bytes]:
        self.asked.append(script)
        return await self.inner.payments_to(script)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Late:
    base: str
    admin: str
    services: Services
    late: Any  # CheckoutWatcher
    store: RedisStore
    tokens: Tokens
    watcher: Counting
    accepted: list[Receipt]

    async def poll(self, ticket: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        status, headers, body = await get(self.base + CHECKOUT_URL + ticket)
        return status, headers, json.loads(body)

    async def refunds(self) -> list[dict[str, Any]]:
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        status, _, body = await get(self.admin + "/refunds", auth)
        assert status == 200, body
        return json.loads(body)["refunds"]

    async def look(self) -> int:
        from gateway.endpoints.checkout import late_round

        return await late_round(self.services, self.late)

    async def settle(self, named: str, how: str) -> tuple[int, dict[str, Any]]:
        """POST /refunds/settle on the admin API."""
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            aiohttp.ClientSession(headers=auth) as http,
            http.post(self.admin + "/refunds/settle", json={"txid": named, "how": how}) as r,
        ):
            return r.status, await r.json()

    async def look_again_at(self, *checkouts: Checkout) -> int:
        """Make each checkout's next look due now, then look."""
        for checkout in checkouts:
            await self.store.look_again(checkout.id, 0)
        return await self.look()


LateFactory = Callable[..., Awaitable[Late]]


@pytest.fixture
async def late_gateway(
    devnet_http: tuple[str, Devnet], redis_server: RedisServer, upstream: Upstream, tmp_path: Path
) -> AsyncIterator[LateFactory]:
    """Start gateways (workers) sharing one Redis key space, one devnet, one key ring."""
    from gateway.endpoints import admin
    from gateway.payments.checkout import CheckoutWatcher

    url, _ = devnet_http
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(PAID_POLICY.format(upstream=upstream.url))
    ring = tmp_path / "token-keys"
    KeyRing.load(ring)
    prefix = fresh_prefix()
    closers: list[Callable[[], Awaitable[None]]] = []

    async def start(*, grace: int = 86_400, most: int = 20_000) -> Late:
        store = RedisStore.from_url(redis_server.url, prefix=prefix)
        tokens = Tokens(KeyRing.load(ring))
        tracker, broadcaster = DevnetTracker(url), ArcBroadcaster(url)
        accepted: list[Receipt] = []
        cashier = Cashier(
            PAID_SERVER,
            tracker=tracker,
            broadcaster=broadcaster,
            store=store,
            tokens=tokens,
            on_accepted=lambda _, receipt: accepted.append(receipt),
        )
        watcher = Counting(WocWatcher(url))
        late = CheckoutWatcher(watcher, store, grace=grace, most=most)
        services = Services(
            PolicyHolder.load(folder),
            PAID_SERVER.public_key().hex(),
            tokens=tokens,
            cashier=cashier,
            store=store,
            revocations=Revocations(store),
            watcher=late,
            cookie_secure=False,
        )
        proxy = Proxy(connect_timeout=2, read_timeout=5)
        await proxy.start()
        proxy.own_token = tokens.issued_here
        public = web.ServerRunner(
            web.Server(assemble_gateway(services, proxy).handle, access_log=None)
        )
        await public.setup()
        await web.TCPSite(public, "127.0.0.1", 0).start()
        private = web.AppRunner(admin.app(services, ADMIN_TOKEN), access_log=None)
        await private.setup()
        await web.TCPSite(private, "127.0.0.1", 0).start()
        closers.extend(
            [public.cleanup, private.cleanup, proxy.close, tracker.close, broadcaster.close]
        )
        closers.extend([watcher.close, store.close])
        return Late(
            f"http://127.0.0.1:{public.addresses[0][1]}",
            f"http://127.0.0.1:{private.addresses[0][1]}",
            services,
            late,
            store,
            tokens,
            watcher,
            accepted,
        )

    yield start
    for close in closers:
        await close()


# --- the store: the watch list and the refund list ------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    store: Any
    clock: FakeClock | None = None  # memory; Redis scripts read the server's TIME

    def now(self) -> float:
        return self.clock() if self.clock else time.time()

    async def elapse(self, seconds: float) -> None:
        if self.clock:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()
        yield Backend(MemoryStore(clock), clock)
        return
    server = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    store = RedisStore.from_url(server.url, prefix=fresh_prefix())
    yield Backend(store)
    await store.close()


def refund_at(txid: str, at: int, reason: str = "underpaid") -> Any:
    from gateway.store.refunds import Refund

    return Refund(
        txid=txid,
        vout=0,
        satoshis=20,
        price=25,
        checkout="Y2hlY2tvdXQ=",
        service="archive",
        resource="/archive/pages/1",
        method="GET",
        address="1Address",
        expired=at - 60,
        time=at,
        reason=reason,
        detail="the payment is 20 satoshis; the price is 25",
        sender=ANYONE_HEX,
        prefix="Y2hlY2tvdXQ=",
        suffix="MTcwMDAwMDAwMDAwMA==",
    )


async def test_a_checkout_is_watched_once_and_handed_out_when_due(backend: Backend) -> None:
    store, now = backend.store, int(backend.now())
    assert await store.watch_checkout("c1", "entry-1", now + 30, now + 100, 10)
    assert not await store.watch_checkout("c1", "other", now, now + 100, 10)  # kept once
    assert await store.watch_checkout("c2", "entry-2", now - 1, now + 100, 10)
    assert await store.due_checkouts(10, 60) == [("c2", "entry-2")]
    assert await store.due_checkouts(10, 60) == []  # leased to the first caller
    await store.look_again("c2", now - 1)  # the looker is done: due again at once
    await store.look_again("unknown", now - 1)  # nothing happens
    assert await store.due_checkouts(10, 60) == [("c2", "entry-2")]
    await store.unwatch_checkout("c2")
    await store.look_again("c2", now - 1)
    assert await store.due_checkouts(10, 60) == []
    # A lease that ran out (its looker died) hands the checkout out again.
    await store.look_again("c1", now - 1)
    assert await store.due_checkouts(10, 1) == [("c1", "entry-1")]
    await backend.elapse(1.6)
    assert await store.due_checkouts(10, 1) == [("c1", "entry-1")]


async def test_concurrent_lookers_each_get_a_checkout_once(backend: Backend) -> None:
    store, now = backend.store, int(backend.now())
    for n in range(30):
        assert await store.watch_checkout(f"c{n}", f"e{n}", now - 1, now + 100, 100)
    batches = await asyncio.gather(*(store.due_checkouts(7, 60) for _ in range(6)))
    handed = [checkout for batch in batches for checkout, _ in batch]
    assert sorted(handed) == sorted(f"c{n}" for n in range(30))  # each exactly once


async def test_the_watch_list_is_bounded_in_size_and_time(backend: Backend) -> None:
    store, now = backend.store, int(backend.now())
    assert not await store.watch_checkout("past", "e", now - 10, now - 1, 10)
    assert await store.watch_checkout("a", "e", now - 1, now + 2, 2)
    assert await store.watch_checkout("b", "e", now + 1000, now + 1000, 2)
    assert not await store.watch_checkout("c", "e", now - 1, now + 100, 2)  # full
    await store.unwatch_checkout("b")
    assert await store.watch_checkout("c", "e", now + 1000, now + 1000, 2)
    await backend.elapse(3.2)
    # "a" is past its grace: forgotten, never handed out, and its place is free.
    assert await store.due_checkouts(10, 60) == []
    assert await store.watch_checkout("d", "e", now + 1000, now + 1000, 2)


async def test_a_refund_is_listed_once_settled_once_and_paged(backend: Backend) -> None:
    store = backend.store
    t0 = 1_700_000_000
    entries = [refund_at(f"tx{n:02d}", t0 + n // 2) for n in range(7)]
    for entry in entries:
        assert await store.add_refund(entry)
    assert not await store.add_refund(refund_at("tx00", t0 + 99, "paid-twice"))  # once
    (first,) = await store.refunds(txid="tx00")
    assert first == entries[0] and first.settled == ""
    # Settled once, by outpoint; the first settlement stands; one may precede the listing.
    assert await store.settle_refund("tx01:0", "refunded", t0 + 500)
    assert not await store.settle_refund("tx01:0", "honoured", t0 + 600)
    assert await store.settle_refund("tx99:0", "grant-delivered", t0 + 10)
    assert await store.add_refund(refund_at("tx99", t0 + 9))
    (settled,) = await store.refunds(txid="tx01")
    assert (settled.settled, settled.settled_time) == ("refunded", t0 + 500)
    (delivered,) = await store.refunds(txid="tx99")
    assert delivered.settled == "grant-delivered"
    # Ordered by (time, txid), paged with `after`, every entry exactly once.
    seen, after = [], None
    while True:
        page = await store.refunds(limit=3, after=after)
        seen += [r.txid for r in page]
        if len(page) < 3:
            break
        after = page[-1].outpoint
    assert seen == [*(f"tx{n:02d}" for n in range(7)), "tx99"]
    assert [r.txid for r in await store.refunds(since=t0 + 3)] == ["tx06", "tx99"]
    assert await store.refunds(txid="nothing") == []
    with pytest.raises(ValueError):
        await store.refunds(after="nothing")


async def test_each_output_of_a_transaction_is_its_own_entry(backend: Backend) -> None:
    """One transaction may pay several checkouts: entries are keyed by outpoint."""
    from dataclasses import replace

    store = backend.store
    t0 = 1_700_000_000
    tx = "ab" * 32
    outputs = [replace(refund_at(tx, t0 + n), vout=vout) for n, vout in enumerate((10, 2, 9))]
    for entry in outputs:
        assert await store.add_refund(entry)
    assert not await store.add_refund(replace(refund_at(tx, t0 + 50), vout=2))  # once per output
    assert await store.add_refund(refund_at("ab" * 31 + "ac", t0 + 1))  # a txid sharing a prefix
    assert [r.vout for r in await store.refunds(txid=tx)] == [10, 2, 9]  # by (time, outpoint)
    assert [r.vout for r in await store.refunds(txid=tx, limit=2)] == [10, 2]
    assert [r.vout for r in await store.refunds(txid=tx, since=t0 + 1)] == [2, 9]
    assert [r.vout for r in await store.refunds(txid=tx, after=f"{tx}:2")] == [9]
    assert [r.outpoint for r in await store.refunds(txid=tx[:-1])] == []
    assert await store.settle_refund(f"{tx}:2", "refunded", t0 + 100)
    assert [(r.vout, r.settled) for r in await store.refunds(txid=tx)] == [
        (10, ""),
        (2, "refunded"),
        (9, ""),
    ]
    seen = [r.outpoint for r in await store.refunds(limit=2)]
    seen += [r.outpoint for r in await store.refunds(limit=10, after=seen[-1])]
    assert seen == [f"{tx}:10", f"{tx}:2", "ab" * 31 + "ac:0", f"{tx}:9"]


async def test_looks_just_due_come_before_a_backlog_of_overdue_ones(backend: Backend) -> None:
    """A recently expired checkout's first look is not queued behind old ones' re-looks."""
    store, now = backend.store, int(backend.now())
    for n in range(20):  # old checkouts whose looks are long overdue
        assert await store.watch_checkout(f"old{n}", "e", now - 3_000 + n, now + 100, 100)
    assert await store.watch_checkout("new", "e", now - 1, now + 100, 100)
    assert [c for c, _ in await store.due_checkouts(2, 60)] == ["new", "old19"]
    assert [c for c, _ in await store.due_checkouts(1, 60)] == ["old18"]
    # A look rescheduled to now goes ahead of the rest again.
    await store.look_again("new", now)
    assert [c for c, _ in await store.due_checkouts(1, 60)] == ["new"]


async def test_a_new_checkout_gets_its_first_look_soon_whatever_the_backlog() -> None:
    """The watch list full of checkouts (a flood of pages), looked at at the
    late watch's rate: one expiring later still gets its first look within
    seconds, and every checkout's looks keep up (the list is sized to the rate)."""
    from gateway.endpoints.checkout import BATCH, LEASE, ROUND
    from gateway.payments.checkout import LOOK_RATE, MOST_WATCHED, looks_within, next_look

    assert looks_within(86_400) * MOST_WATCHED <= LOOK_RATE * 86_400  # sized to the rate
    clock = FakeClock()
    store, t0 = MemoryStore(clock), int(clock.now)
    flood = t0 + 600  # they all expire at once
    for n in range(MOST_WATCHED - 1):
        kept = await store.watch_checkout(
            f"j{n}", "e", next_look(flood, t0), flood + 86_400, MOST_WATCHED
        )
        assert kept
    real = flood + 600  # a real page's checkout, opened ten minutes later
    assert await store.watch_checkout("real", "e", next_look(real, t0), real + 86_400, MOST_WATCHED)
    looks: list[float] = []
    while len(looks) < 3:
        clock.now += ROUND
        for checkout, _ in await store.due_checkouts(BATCH, LEASE):
            expires = real if checkout == "real" else flood
            if checkout == "real":
                looks.append(clock.now - real)
            await store.look_again(checkout, next_look(expires, clock.now))
    assert looks[0] <= 3 + 2 * ROUND and looks[2] <= 60, looks


# --- through a gateway ------------------------------------------------------------------------


async def test_a_late_phone_payment_is_recorded_delivered_and_swept(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet]
) -> None:
    """The phone broadcasts seconds after expiry; the page is still waiting."""
    from gateway.endpoints.checkout import watch_late

    _, chain = devnet_http
    gw = await late_gateway()
    ticket, checkout = short_checkout(gw.tokens, "/archive/pages/7", lasts=2)
    assert (await gw.poll(ticket))[2] == {"status": "pending"}  # the page, on load
    await expire(checkout)
    tx = phone_pays(chain, address_of(checkout), PRICE)

    task = asyncio.ensure_future(watch_late(gw.services, gw.late, every=1))
    try:
        receipt = await until(
            lambda: gw.store.receipt(f"checkout:{checkout.id}"), 15, "a receipt for it"
        )
    finally:
        task.cancel()
    # A receipt like any other, with what sweeping needs to spend the output.
    assert receipt.txid == tx.txid() and receipt.satoshis == PRICE
    assert (receipt.sender, receipt.prefix, receipt.suffix) == (
        ANYONE_HEX,
        checkout.id,
        suffix(checkout),
    )
    assert [r.txid for r in await gw.store.receipts(txid=tx.txid())] == [tx.txid()]
    assert len(gw.accepted) == 1
    [listed] = await gw.refunds()
    assert listed["reason"] == "unclaimed" and listed["grant_id"] == receipt.grant_id
    assert listed["settled"] == ""

    # The page polls again: paid, with the grant, which opens the resource.
    status, headers, body = await gw.poll(ticket)
    assert status == 200 and body["status"] == "paid" and body["txid"] == tx.txid()
    token = headers["X-Farebox-Token"]
    status, _, content = await get(
        gw.base + "/archive/pages/7", {"Cookie": f"farebox_token={token}"}
    )
    assert status == 200 and b'"/pages/7"' in content
    [listed] = await gw.refunds()
    assert listed["settled"] == "grant-delivered"  # nothing left to refund

    treasury = PrivateKey().address()
    report = await sweep(
        PAID_SERVER, treasury, StoreReceipts(gw.store), DevnetUtxos(chain), LocalBroadcaster(chain)
    )
    assert (report.outputs, report.satoshis) == (1, PRICE)
    assert not chain.is_unspent(tx.txid(), 0)


async def test_the_page_polling_after_expiry_finds_the_payment_itself(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet]
) -> None:
    """Within the grace period a status poll looks on chain as before expiry."""
    _, chain = devnet_http
    gw = await late_gateway()
    ticket, checkout = short_checkout(gw.tokens, "/archive/pages/8", lasts=1)
    await expire(checkout)
    tx = phone_pays(chain, address_of(checkout), PRICE)
    status, headers, body = await gw.poll(ticket)
    assert status == 200 and body["status"] == "paid" and body["txid"] == tx.txid()
    assert "farebox_token=" in headers["Set-Cookie"]
    assert len(gw.accepted) == 1
    assert await gw.refunds() == []  # delivered: nothing to list
    # The late watch, looking later, finds it recorded: one last look for
    # other payments to it (none), then it stops watching.
    await gw.store.look_again(checkout.id, 0)
    asked = len(gw.watcher.asked)
    assert await gw.look() == 1
    assert len(gw.watcher.asked) == asked + 1 and await gw.store.due_checkouts(10, 60) == []
    assert await gw.refunds() == []


async def test_an_underpaid_late_payment_is_listed_never_granted(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet]
) -> None:
    _, chain = devnet_http
    gw = await late_gateway()
    ticket, checkout = short_checkout(gw.tokens, "/archive/pages/9", lasts=1)
    await gw.poll(ticket)
    await expire(checkout, after=3.2)  # the first look is due 3 s after expiry
    tx = phone_pays(chain, address_of(checkout), PRICE - 5)
    assert await gw.look() == 1
    [listed] = await gw.refunds()
    assert listed["txid"] == tx.txid() and listed["vout"] == 0
    assert (listed["satoshis"], listed["price"]) == (PRICE - 5, PRICE)
    assert (listed["checkout"], listed["reason"]) == (checkout.id, "underpaid")
    assert listed["resource"] == "/archive/pages/9" and listed["grant_id"] == ""
    assert "20 satoshis" in listed["detail"] and listed["time"] >= checkout.expires
    assert listed["address"] == address_of(checkout)
    assert "sender" not in listed  # derivation data stays on the server
    assert await gw.store.receipt(f"checkout:{checkout.id}") is None and gw.accepted == []
    status, headers, body = await gw.poll(ticket)
    assert (status, body) == (200, {"status": "expired"}) and "X-Farebox-Token" not in headers
    # Found again at the next look: listed once.
    await gw.store.look_again(checkout.id, 0)
    assert await gw.look() == 1
    assert len(await gw.refunds()) == 1
    # The citizen's money is the server key's to spend: sweep takes it too.
    report = await sweep(
        PAID_SERVER,
        PrivateKey().address(),
        StoreReceipts(gw.store),
        DevnetUtxos(chain),
        LocalBroadcaster(chain),
    )
    assert (report.outputs, report.satoshis) == (1, PRICE - 5)
    # The admin refunds it and says so, once; it stays listed.
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        settle = gw.admin + "/refunds/settle"
        async with http.post(settle, json={"txid": tx.txid(), "how": "refunded"}) as r:
            assert r.status == 200 and (await r.json())["settled"] == "refunded"
        async with http.post(settle, json={"txid": tx.txid(), "how": "honoured"}) as r:
            assert r.status == 409 and (await r.json())["settled"] == "refunded"
        async with http.post(settle, json={"txid": "00" * 32, "how": "refunded"}) as r:
            assert r.status == 404 and (await r.json())["reason"] == "no-refund"
        async with http.post(settle, json={"txid": tx.txid(), "how": "forgotten"}) as r:
            assert r.status == 400
        async with http.get(gw.admin + "/refunds", params={"format": "csv"}) as r:
            assert r.status == 200 and tx.txid() in await r.text()
    [listed] = await gw.refunds()
    assert listed["settled"] == "refunded" and listed["settled_time"] > 0


async def test_a_payment_mined_before_it_was_seen_is_taken_granted_and_swept(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet]
) -> None:
    """Found hours late, a phone's payment is usually in a block: a checkout's
    address is its own, so it is taken (its proof checked) and granted."""
    _, chain = devnet_http
    gw = await late_gateway()
    ticket, checkout = short_checkout(gw.tokens, "/archive/pages/10", lasts=1)
    await gw.poll(ticket)
    await expire(checkout, after=3.2)
    tx = phone_pays(chain, address_of(checkout), PRICE)
    chain.mine()
    assert await gw.look() == 1
    receipt = await gw.store.receipt(f"checkout:{checkout.id}")
    assert receipt is not None and receipt.txid == tx.txid() and len(gw.accepted) == 1
    [listed] = await gw.refunds()  # nobody has collected its grant yet
    assert (listed["txid"], listed["reason"], listed["satoshis"]) == (tx.txid(), "unclaimed", PRICE)
    status, headers, body = await gw.poll(ticket)  # the page, still open
    assert status == 200 and body["status"] == "paid" and "X-Farebox-Token" in headers
    assert await gw.store.due_checkouts(10, 60) == []  # paid in full: no longer watched
    report = await sweep(
        PAID_SERVER,
        PrivateKey().address(),
        StoreReceipts(gw.store),
        DevnetUtxos(chain),
        LocalBroadcaster(chain),
    )
    assert (report.outputs, report.satoshis) == (1, PRICE)


async def test_a_checkout_paid_by_a_transaction_already_mined_opens_at_once(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet]
) -> None:
    _, chain = devnet_http
    gw = await late_gateway()
    ticket, checkout = short_checkout(gw.tokens, "/archive/pages/12", lasts=60)
    tx = phone_pays(chain, address_of(checkout), PRICE)
    chain.mine()  # as a faucet that mines at once, or a slow page
    status, headers, body = await gw.poll(ticket)
    assert status == 200 and body == {**body, "status": "paid", "txid": tx.txid()}
    assert "X-Farebox-Token" in headers and await gw.refunds() == []


async def test_past_the_grace_period_nothing_is_watched(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet]
) -> None:
    _, chain = devnet_http
    gw = await late_gateway(grace=2)
    ticket, checkout = short_checkout(gw.tokens, "/archive/pages/11", lasts=1)
    await gw.poll(ticket)
    assert len(gw.watcher.asked) == 1
    await expire(checkout, after=2.5)  # expired, and the 2 s grace is over
    tx = phone_pays(chain, address_of(checkout), PRICE)
    assert await gw.look() == 0  # forgotten by the store
    status, _, body = await gw.poll(ticket)
    assert (status, body) == (200, {"status": "expired"})
    assert len(gw.watcher.asked) == 1  # never asked about it again
    assert await gw.store.receipt(f"checkout:{checkout.id}") is None and gw.accepted == []
    assert await gw.refunds() == []
    assert chain.is_unspent(tx.txid(), 0)


async def test_only_signed_checkouts_are_watched_and_only_so_many(
    late_gateway: LateFactory,
) -> None:
    gw = await late_gateway(most=2)
    tickets = [short_checkout(gw.tokens, f"/archive/pages/{n}", lasts=60) for n in range(3)]
    kept = [await gw.late.keep(checkout, ticket, "127.0.0.1") for ticket, checkout in tickets]
    assert kept == [True, True, False]
    # A ticket Farebox did not sign is nobody's checkout: nothing is looked at.
    forged = tickets[0][0][:-4] + ("AAAA" if not tickets[0][0].endswith("AAAA") else "BBBB")
    status, _, _ = await get(gw.base + CHECKOUT_URL + forged)
    assert status == 404 and gw.watcher.asked == []


async def test_two_workers_on_one_redis_record_a_late_payment_once(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet]
) -> None:
    _, chain = devnet_http
    a, b = await late_gateway(), await late_gateway()
    ticket, checkout = short_checkout(a.tokens, "/archive/pages/12", lasts=1)
    await a.poll(ticket)
    await b.poll(ticket)
    await expire(checkout, after=3.2)
    tx = phone_pays(chain, address_of(checkout), PRICE)
    # Both workers look at once, twice over, while the page polls each.
    await asyncio.gather(a.look(), b.look(), a.look(), b.look(), a.poll(ticket), b.poll(ticket))
    for _ in range(2):
        await a.store.look_again(checkout.id, 0)
        await asyncio.gather(a.look(), b.look())
    assert len(a.accepted) + len(b.accepted) == 1  # accepted once
    assert [r.txid for r in await a.store.receipts(txid=tx.txid())] == [tx.txid()]
    assert len(await a.refunds()) <= 1 and await a.refunds() == await b.refunds()


async def test_a_refunded_late_payment_never_also_grants(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet]
) -> None:
    """The admin refunds a late payment nobody collected: its grant is revoked and the
    checkout answers "refunded", never the grant; an honoured one keeps its grant."""
    _, chain = devnet_http
    gw = await late_gateway()
    (t1, c1), (t2, c2) = (
        short_checkout(gw.tokens, f"/archive/pages/{n}", lasts=1) for n in (14, 15)
    )
    await gw.poll(t1)
    await gw.poll(t2)
    await expire(c2, after=3.2)
    paid = {c.id: phone_pays(chain, address_of(c), PRICE) for c in (c1, c2)}
    assert await gw.look() == 2
    assert sorted(r["reason"] for r in await gw.refunds()) == ["unclaimed", "unclaimed"]
    receipt = await gw.store.receipt(f"checkout:{c1.id}")
    token = (await gw.store.accepted(f"checkout:{c1.id}", paid[c1.id].txid())).token

    status, settled = await gw.settle(paid[c1.id].txid(), "refunded")
    assert status == 200 and settled["revoked"] == receipt.grant_id
    assert await gw.store.revoked(receipt.grant_id)
    status, headers, body = await gw.poll(t1)
    assert (status, body["status"]) == (200, "refunded") and "X-Farebox-Token" not in headers
    assert "Set-Cookie" not in headers
    # The grant minted for it opens nothing.
    status, _, _ = await get(gw.base + "/archive/pages/14", {"Cookie": f"farebox_token={token}"})
    assert status == 402
    [entry] = [r for r in await gw.refunds() if r["checkout"] == c1.id]
    assert entry["settled"] == "refunded"

    # Honoured: the grant stands and the page gets it.
    status, settled = await gw.settle(paid[c2.id].txid(), "honoured")
    assert status == 200 and "revoked" not in settled
    status, headers, body = await gw.poll(t2)
    assert body["status"] == "paid" and "X-Farebox-Token" in headers


async def test_a_refund_settled_before_the_revocation_lands_still_withholds_the_grant(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet]
) -> None:
    """Settled `refunded` (the revocation not yet made): the poll answers refunded."""
    _, chain = devnet_http
    gw = await late_gateway()
    ticket, checkout = short_checkout(gw.tokens, "/archive/pages/16", lasts=1)
    await gw.poll(ticket)
    await expire(checkout, after=3.2)
    tx = phone_pays(chain, address_of(checkout), PRICE)
    assert await gw.look() == 1
    assert await gw.store.settle_refund(f"{tx.txid()}:0", "refunded", int(time.time()))
    status, headers, body = await gw.poll(ticket)
    assert body == {"status": "refunded", "txid": tx.txid(), "satoshis": PRICE}
    assert "X-Farebox-Token" not in headers
    # The admin sees it settled; settling again finishes the revocation.
    status, answer = await gw.settle(tx.txid(), "refunded")
    assert status == 409 and answer["settled"] == "refunded"
    assert await gw.store.revoked((await gw.store.receipt(f"checkout:{checkout.id}")).grant_id)


@pytest.mark.parametrize("pages", [(21, 22), (23, 23)], ids=["two-resources", "one-resource"])
async def test_one_transaction_paying_two_checkouts_lists_the_second_output(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet], pages: tuple[int, int]
) -> None:
    """One transaction buys one thing: the output paying the other checkout is listed
    (`payment-reused`), no longer watched, and swept."""
    _, chain = devnet_http
    gw = await late_gateway()
    (t1, c1), (t2, c2) = (short_checkout(gw.tokens, f"/archive/pages/{n}", lasts=1) for n in pages)
    await gw.poll(t1)
    await gw.poll(t2)
    await expire(c2, after=3.2)
    phone = PrivateKey()
    parent = chain.faucet(phone.address(), 2 * PRICE + 10_000)
    outputs = [(address_of(c1), PRICE), (address_of(c2), PRICE), (phone.public_key(), 9_990)]
    tx = spend(parent, 0, phone, outputs)
    assert chain.submit(tx).accepted
    assert await gw.look() == 2
    for _ in range(2):
        await gw.look_again_at(c1, c2)
    assert len(gw.accepted) == 1
    [bought] = {r.prefix for c in (c1, c2) if (r := await gw.store.receipt(f"checkout:{c.id}"))}
    reused = int(bought == c1.id)  # the vout paying the checkout that bought nothing
    listed = {(r["vout"], r["reason"]) for r in await gw.refunds()}
    assert listed == {(1 - reused, "unclaimed"), (reused, "payment-reused")}
    assert await gw.store.due_checkouts(10, 60) == []  # neither is watched any more
    report = await sweep(
        PAID_SERVER,
        PrivateKey().address(),
        StoreReceipts(gw.store),
        DevnetUtxos(chain),
        LocalBroadcaster(chain),
    )
    assert (report.outputs, report.satoshis) == (2, 2 * PRICE)


async def test_one_transaction_underpaying_two_checkouts_lists_both_outputs(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet]
) -> None:
    """Entries are per output: both are listed and swept; the admin names one by
    TXID:VOUT (a bare txid naming two is ambiguous), in any case of hex."""
    _, chain = devnet_http
    gw = await late_gateway()
    (t1, c1), (t2, c2) = (
        short_checkout(gw.tokens, f"/archive/pages/{n}", lasts=1) for n in (31, 32)
    )
    await gw.poll(t1)
    await gw.poll(t2)
    await expire(c2, after=3.2)
    phone = PrivateKey()
    parent = chain.faucet(phone.address(), 10_100)
    outputs = [
        (address_of(c1), PRICE - 5),
        (address_of(c2), PRICE - 5),
        (phone.public_key(), 10_000),
    ]
    tx = spend(parent, 0, phone, outputs)
    assert chain.submit(tx).accepted
    assert await gw.look() == 2
    await gw.look_again_at(c1, c2)  # found again: listed once each
    listed = sorted((r["vout"], r["checkout"], r["reason"]) for r in await gw.refunds())
    assert listed == [(0, c1.id, "underpaid"), (1, c2.id, "underpaid")]

    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    status, _, body = await get(gw.admin + f"/refunds?txid={tx.txid().upper()}", auth)
    assert status == 200 and [r["vout"] for r in json.loads(body)["refunds"]] == [0, 1]
    status, _, body = await get(gw.admin + f"/refunds?txid={tx.txid()}:1", auth)
    assert status == 200 and [r["checkout"] for r in json.loads(body)["refunds"]] == [c2.id]
    status, _, body = await get(gw.admin + "/refunds?limit=1", auth)
    assert json.loads(body)["next"] == f"{tx.txid()}:0"
    status, _, body = await get(gw.admin + f"/refunds?after={tx.txid()}:0", auth)
    assert [r["vout"] for r in json.loads(body)["refunds"]] == [1]

    status, answer = await gw.settle(tx.txid(), "refunded")
    assert status == 409 and answer["reason"] == "refund-ambiguous"
    assert answer["outpoints"] == [f"{tx.txid()}:0", f"{tx.txid()}:1"]
    status, answer = await gw.settle(f"{tx.txid().upper()}:1", "refunded")
    assert status == 200 and (answer["vout"], answer["settled"]) == (1, "refunded")
    settled = sorted((r["vout"], r["settled"]) for r in await gw.refunds())
    assert settled == [(0, ""), (1, "refunded")]
    report = await sweep(
        PAID_SERVER,
        PrivateKey().address(),
        StoreReceipts(gw.store),
        DevnetUtxos(chain),
        LocalBroadcaster(chain),
    )
    assert (report.outputs, report.satoshis) == (2, 2 * (PRICE - 5))


async def test_the_admin_refuses_what_is_no_txid(late_gateway: LateFactory) -> None:
    gw = await late_gateway()
    assert await gw.store.add_refund(refund_at("aa" * 32, 1_700_000_000))
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for named in ("\ud800", "aa", "zz" * 32, "aa" * 32 + ":x", "aa" * 32 + ":-1", "\u0000"):
        status, answer = await gw.settle(named, "refunded")
        assert status == 400 and "txid" in answer["detail"], (named, answer)
    for query in ("txid=%00", "txid=" + "x" * 64, "after=" + "aa" * 32 + ":", "after=nothing"):
        status, _, body = await get(gw.admin + "/refunds?" + query, auth)
        assert status == 400, (query, body)
    status, answer = await gw.settle("AA" * 32, "honoured")  # one entry: the txid names it
    assert status == 200 and answer["settled"] == "honoured"


async def test_a_second_payment_to_a_checkout_a_poll_took_is_listed(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet]
) -> None:
    """The page's poll took the first payment; the late watch lists the second, once."""
    _, chain = devnet_http
    gw = await late_gateway()
    ticket, checkout = short_checkout(gw.tokens, "/archive/pages/51", lasts=1)
    await gw.poll(ticket)
    await expire(checkout, after=0.5)
    first = phone_pays(chain, address_of(checkout), PRICE)
    second = phone_pays(chain, address_of(checkout), PRICE)  # the phone paid again
    assert (await gw.poll(ticket))[2]["status"] == "paid"
    await expire(checkout, after=3.2)
    assert await gw.look() == 1
    await gw.look_again_at(checkout)  # no longer watched: nothing more
    receipt = await gw.store.receipt(f"checkout:{checkout.id}")
    other = second if receipt.txid == first.txid() else first
    [listed] = await gw.refunds()
    assert (listed["txid"], listed["reason"], listed["satoshis"]) == (
        other.txid(),
        "paid-twice",
        PRICE,
    )
    assert await gw.store.due_checkouts(10, 60) == []


async def test_a_late_payment_for_what_became_free_is_listed_not_taken(
    late_gateway: LateFactory, devnet_http: tuple[str, Devnet]
) -> None:
    """The ticket's route is free now: nothing to sell, the payment is listed."""
    _, chain = devnet_http
    gw = await late_gateway()
    ticket, checkout = short_checkout(gw.tokens, "/archive/notes/1", lasts=1)  # a free route
    assert await gw.late.keep(checkout, ticket, "127.0.0.1")  # as if polled while priced
    await expire(checkout, after=3.2)
    tx = phone_pays(chain, address_of(checkout), PRICE)
    assert await gw.look() == 1
    assert gw.accepted == [] and await gw.store.receipt(f"checkout:{checkout.id}") is None
    [listed] = await gw.refunds()
    assert (listed["txid"], listed["reason"]) == (tx.txid(), "not-for-sale")
    status, _, _ = await get(gw.base + CHECKOUT_URL + ticket)
    assert status == 410


async def test_a_checkout_refused_by_a_full_watch_list_is_kept_once_room_frees(
    late_gateway: LateFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood fills the list; a real page's checkout is watched once a place frees."""
    import gateway.payments.checkout as checkouts

    gw = await late_gateway(most=3)
    flood = [short_checkout(gw.tokens, f"/archive/pages/{n}", lasts=60) for n in range(3)]
    for ticket, _ in flood:
        await gw.poll(ticket)
    ticket, checkout = short_checkout(gw.tokens, "/archive/pages/99", lasts=60)
    await gw.poll(ticket)  # the real page: the list is full
    assert not await gw.store._client.hexists(gw.store.keys.checkouts()[2], checkout.id)
    await gw.store.unwatch_checkout(flood[0][1].id)  # a place frees
    monkeypatch.setattr(checkouts, "RETRY_KEEP", 0, raising=False)  # a poll a while later
    await gw.poll(ticket)
    assert await gw.store._client.hexists(gw.store.keys.checkouts()[2], checkout.id)
    assert not await gw.late.keep(checkout, ticket, "127.0.0.1")  # kept: not asked again


# --- `farebox serve` processes, `farebox refunds`, `farebox sweep` ---------------------------------


async def admin_of(gw: Running) -> str:
    port = (await gw.wait_for_log(r"admin API on http://[^:]+:(\d+)")).group(1)
    return f"http://127.0.0.1:{port}"


async def test_nobody_polls_two_instances_record_it_once_for_refund_and_sweep(
    tmp_path: Path, upstream: Upstream, redis_server: RedisServer, devnet_http
) -> None:
    """The main case: the page polled on load, then went away; the phone paid just
    after the checkout expired. Two instances share Redis: one records it, once;
    the admin finds it on the refund list; sweep spends it."""
    url, chain = devnet_http
    key_file = tmp_path / "server.key"
    made = run("keys", "generate", "--out", str(key_file))
    server = PublicKey(made.stdout.split("public key: ")[1].strip())
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(PAID_POLICY.format(upstream=upstream.url))
    ring = tmp_path / "token-keys"
    tokens = Tokens(KeyRing.load(ring))
    prefix = fresh_prefix()
    args = ["--policies", str(folder), "--key-file", str(key_file), "--port", "0",
            "--token-keys", str(ring), "--devnet-url", url, "--store", redis_server.url,
            "--admin-port", "0"]  # fmt: skip
    env = {"FAREBOX_ADMIN_TOKEN": ADMIN_TOKEN, "FAREBOX_STORE_PREFIX": prefix}
    store = RedisStore.from_url(redis_server.url, prefix=prefix)
    journals = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    try:
        async with (
            serve(*args, "--receipts-file", str(journals[0]), env=env) as a,
            serve(*args, "--receipts-file", str(journals[1]), env=env) as b,
        ):
            # Opened once both instances run: its 3 s must not pass while they start.
            ticket, checkout = short_checkout(tokens, "/archive/pages/13", lasts=3)
            address = payee(server, checkout).address()
            status, _, body = await get(a.base + CHECKOUT_URL + ticket)  # the page, on load
            assert json.loads(body) == {"status": "pending"}
            await expire(checkout)
            tx = phone_pays(chain, address, PRICE)

            receipt = await until(
                lambda: store.receipt(f"checkout:{checkout.id}"), 20, "a receipt for it"
            )
            assert receipt.txid == tx.txid() and receipt.sender == ANYONE_HEX
            auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            for gw in (a, b):
                status, _, body = await get(await admin_of(gw) + "/refunds", auth)
                assert status == 200, body
                [listed] = json.loads(body)["refunds"]
                assert (listed["txid"], listed["satoshis"], listed["checkout"]) == (
                    tx.txid(),
                    PRICE,
                    checkout.id,
                )
                assert listed["reason"] == "unclaimed" and listed["grant_id"] == receipt.grant_id
                assert listed["time"] >= checkout.expires and listed["settled"] == ""
            await asyncio.sleep(2.5)  # more rounds on both: still recorded once
        lines = [line for j in journals if j.exists() for line in j.read_text().splitlines()]
        assert [json.loads(line)["txid"] for line in lines] == [tx.txid()]
        assert len(await store.receipts(txid=tx.txid())) == 1
    finally:
        await store.close()

    listed = await asyncio.to_thread(
        run, "refunds", "--store", redis_server.url, env={"FAREBOX_STORE_PREFIX": prefix}
    )
    assert listed.returncode == 0, listed.stderr
    assert tx.txid() in listed.stdout and "unclaimed" in listed.stdout
    assert f"checkout {checkout.id}" in listed.stdout and "1 open (25 satoshis)" in listed.stdout

    treasury = PrivateKey().address()
    swept = await asyncio.to_thread(
        run, "sweep", "--to", treasury, "--store", redis_server.url, "--devnet-url", url,
        env={"FAREBOX_KEY_FILE": str(key_file), "FAREBOX_STORE_PREFIX": prefix},
    )  # fmt: skip
    assert swept.returncode == 0, swept.stderr + swept.stdout
    assert "swept 1 output, 25 satoshis" in swept.stdout
    assert not chain.is_unspent(tx.txid(), 0)

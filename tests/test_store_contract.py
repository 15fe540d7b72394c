"""One contract for every Store: memory, a single Redis, a 3-master Redis Cluster, Sentinel.

The Redis backends run against throwaway redis-server processes (tests/redis_servers.py)
on free ports, never the machine's own Redis; each test uses a fresh key prefix.
Time-dependent cases advance a fake clock for memory and really wait for Redis,
whose scripts read the server's clock.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.store import (
    MAX_BOUND,
    MAX_DAYS,
    MAX_PAGE,
    DayStats,
    Outcome,
    Store,
    StoreUnavailable,
)
from gateway.store.memory import MemoryStore
from gateway.store.receipts import Receipt
from gateway.store.redis import RedisStore, tag
from tests.redis_servers import (
    Cluster,
    RedisServer,
    SentinelSetup,
    free_port,
    need_redis,
    running,
)

PURCHASE = "archive\n/records/1"
WEIRD_IDS = ["", "{", "}", "}x", "a{b}c", "%7B", "%", "tab with spaces", "ünïcode"]


# --- servers (session-wide) and backends (per test) -----------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    with running(server):
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    need_redis()
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    with running(cluster):
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    need_redis()
    setup = SentinelSetup(tmp_path_factory.mktemp("sentinel"))
    with running(setup):
        yield setup


SERVERS = {"redis": "redis_server", "cluster": "redis_cluster", "sentinel": "redis_sentinel"}


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    name: str
    store: Store
    clock: FakeClock | None = None  # memory only: Redis scripts read the server's TIME

    def now(self) -> float:
        return self.clock() if self.clock else time.time()

    async def elapse(self, seconds: float) -> None:
        if self.clock:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)


def redis_store(url: str, **options: Any) -> RedisStore:
    # A fresh prefix isolates each test without flushing shared servers.
    return RedisStore.from_url(url, prefix=f"t{secrets.token_hex(4)}:", **options)


@pytest.fixture(params=["memory", "redis", "cluster", "sentinel"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()
        yield Backend("memory", MemoryStore(clock), clock)
        return
    server = request.getfixturevalue(SERVERS[request.param])
    store = redis_store(server.url)
    yield Backend(request.param, store)
    await store.close()


def receipt_for(txid: str, purchase: str = PURCHASE) -> Receipt:
    service, resource = purchase.split("\n")
    return Receipt(txid, 0, 100, service, resource, "GET", "g-1", 1_700_000_000, 1_700_000_600, "p")


T0 = 1_700_000_000


def receipt_at(txid: str, at: int, service: str = "archive", grant: str = "g-1") -> Receipt:
    return Receipt(txid, 1, 250, service, "/records/*", "GET", grant, T0 + at, T0 + at + 600, "p")


async def paid(store: Store, *receipts: Receipt) -> None:
    """Claim and complete each receipt as the cashier does."""
    for r in receipts:
        assert (await store.claim(r.txid, f"{r.service}\n{r.resource}")).outcome is Outcome.NEW
        await store.complete(r.txid, r, f"tok-{r.txid}")


# --- claims ---------------------------------------------------------------------------


async def test_claim_new_then_same_then_conflict(backend: Backend) -> None:
    store = backend.store
    assert (await store.claim("aa", PURCHASE)).outcome is Outcome.NEW
    same = await store.claim("aa", PURCHASE)
    assert (same.outcome, same.receipt, same.token) == (Outcome.SAME, None, None)
    assert (await store.claim("aa", "archive\n/records/2")).outcome is Outcome.CONFLICT
    assert await store.receipt("aa") is None  # in progress: no receipt yet


async def test_complete_then_same_returns_receipt_and_token(backend: Backend) -> None:
    store = backend.store
    await store.claim("bb", PURCHASE)
    await store.complete("bb", receipt_for("bb"), "tok-bb")
    same = await store.claim("bb", PURCHASE)
    assert (same.outcome, same.receipt, same.token) == (Outcome.SAME, receipt_for("bb"), "tok-bb")
    assert await store.receipt("bb") == receipt_for("bb")
    assert await store.receipt("unknown") is None
    assert (await store.claim("bb", "other\n/x")).outcome is Outcome.CONFLICT


async def test_accepted_only_looks(backend: Backend) -> None:
    store = backend.store
    assert await store.accepted("ab", PURCHASE) is None  # unknown: and nothing claimed
    assert (await store.claim("ab", PURCHASE)).outcome is Outcome.NEW
    assert await store.accepted("ab", PURCHASE) is None  # in progress
    await store.complete("ab", receipt_for("ab"), "tok-ab")
    found = await store.accepted("ab", PURCHASE)
    assert found is not None and (found.receipt, found.token) == (receipt_for("ab"), "tok-ab")
    assert await store.accepted("ab", "other\n/x") is None  # another purchase


async def test_release_only_by_same_purchase_and_before_complete(backend: Backend) -> None:
    store = backend.store
    await store.claim("cc", PURCHASE)
    await store.release("cc", "other\n/x")  # someone else's purchase: ignored
    assert (await store.claim("cc", PURCHASE)).outcome is Outcome.SAME
    await store.release("cc", PURCHASE)
    assert (await store.claim("cc", "other\n/x")).outcome is Outcome.NEW  # free again

    await store.claim("dd", PURCHASE)
    await store.complete("dd", receipt_for("dd"), "tok-dd")
    await store.release("dd", PURCHASE)  # too late: the payment was accepted
    assert (await store.claim("dd", PURCHASE)).token == "tok-dd"
    await store.release("never-claimed", PURCHASE)


async def test_complete_takes_over_a_released_claim(backend: Backend) -> None:
    store = backend.store
    await store.complete("ee", receipt_for("ee"), "tok-ee")  # the claim was released meanwhile
    same = await store.claim("ee", PURCHASE)
    assert (same.outcome, same.token) == (Outcome.SAME, "tok-ee")
    assert (await store.claim("ee", "other\n/x")).outcome is Outcome.CONFLICT


async def test_concurrent_claims_of_one_txid_have_one_owner(backend: Backend) -> None:
    claims = await asyncio.gather(*(backend.store.claim("ff", PURCHASE) for _ in range(200)))
    outcomes = [c.outcome for c in claims]
    assert outcomes.count(Outcome.NEW) == 1
    assert outcomes.count(Outcome.SAME) == 199


# --- tabs -----------------------------------------------------------------------------


async def test_credit_is_idempotent_per_once(backend: Backend) -> None:
    store = backend.store
    assert await store.credit("t", 10, "tx1") == (10, True)
    assert await store.credit("t", 10, "tx1") == (10, False)
    assert await store.credit("t", 5, "tx2") == (15, True)
    assert await store.credit("other", 7, "tx1") == (7, True)  # `once` is per tab
    assert await store.balance("t") == 15


async def test_concurrent_identical_credits_count_once(backend: Backend) -> None:
    results = await asyncio.gather(*(backend.store.credit("t", 10, "tx") for _ in range(200)))
    assert [credited for _, credited in results].count(True) == 1
    assert {balance for balance, _ in results} == {10}
    assert await backend.store.balance("t") == 10


async def test_reserve_holds_only_what_the_balance_covers(backend: Backend) -> None:
    store = backend.store
    assert await store.reserve("nobody", 0, "r0", 30) is None
    assert await store.balance("nobody") is None  # a failed reserve opens no tab
    await store.credit("t", 10, "tx")
    assert await store.reserve("t", 4, "r1", 30) == 6
    assert await store.reserve("t", 7, "r2", 30) is None
    assert await store.balance("t") == 6  # nothing held by the refusal
    assert await store.reserve("t", 6, "r3", 30) == 0
    assert await store.reserve("t", 0, "r4", 30) == 0


async def test_reserving_one_id_twice_holds_once(backend: Backend) -> None:
    store = backend.store
    await store.credit("t", 10, "tx")
    assert await store.reserve("t", 4, "r", 30) == 6
    assert await store.reserve("t", 4, "r", 30) == 6
    assert await store.refund("t", "r") == 10


async def test_concurrent_reserves_never_overdraw(backend: Backend) -> None:
    store = backend.store
    await store.credit("t", 100, "tx")
    left = await asyncio.gather(*(store.reserve("t", 1, f"r{i}", 30) for i in range(1000)))
    granted = [x for x in left if x is not None]
    assert sorted(granted) == list(range(100))
    assert await store.balance("t") == 0


async def test_settle_charges_at_most_what_was_held(backend: Backend) -> None:
    store = backend.store
    await store.credit("t", 10, "tx")
    await store.reserve("t", 6, "r1", 30)
    assert await store.settle("t", "r1", 2) == 8  # 4 of the 6 come back
    assert await store.settle("t", "r1", 2) == 8  # twice: nothing changes
    assert await store.refund("t", "r1") == 8
    await store.reserve("t", 3, "r2", 30)
    assert await store.settle("t", "r2", 99) == 5  # never more than the 3 held


async def test_refund_returns_everything_once(backend: Backend) -> None:
    store = backend.store
    await store.credit("t", 10, "tx")
    await store.reserve("t", 6, "r", 30)
    assert await store.refund("t", "r") == 10
    assert await store.refund("t", "r") == 10
    assert await store.settle("t", "r", 6) == 10
    assert await store.settle("t", "unknown", 5) == 10
    assert await store.settle("nobody", "r", 1) == 0
    assert await store.refund("nobody", "r") == 0
    assert await store.balance("nobody") is None


async def test_expired_reservation_returns_to_the_balance(backend: Backend) -> None:
    store = backend.store
    await store.credit("t", 10, "tx")
    assert await store.reserve("t", 4, "dies", 1) == 6
    assert await store.reserve("t", 3, "lives", 30) == 3
    await backend.elapse(1.05)
    assert await store.balance("t") == 7  # the expired 4 came back, the live 3 did not
    assert await store.settle("t", "dies", 4) == 7  # expired: settling changes nothing
    assert await store.settle("t", "lives", 1) == 9


async def test_balance_of_unknown_tab_is_none(backend: Backend) -> None:
    assert await backend.store.balance("nobody") is None
    await backend.store.credit("zero", 0, "open")
    assert await backend.store.balance("zero") == 0


async def test_amounts_may_not_be_negative(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(ValueError):
        await store.credit("t", -1, "tx")
    with pytest.raises(ValueError):
        await store.reserve("t", -1, "r", 30)
    with pytest.raises(ValueError):
        await store.reserve("t", 1, "r", 0)
    with pytest.raises(ValueError):
        await store.settle("t", "r", -1)
    with pytest.raises(ValueError):
        await store.hit("k", 0)


# --- quotas ---------------------------------------------------------------------------


async def test_hit_counts_within_a_window_then_resets(backend: Backend) -> None:
    store = backend.store
    first = await store.hit("k", 1)
    assert (first.count, first.resets_in) == (1, 1)
    assert (await store.hit("k", 1)).count == 2
    assert (await store.hit("other", 1)).count == 1
    assert (await store.hit("k", 60)).count == 1  # another window length, another counter
    assert 1 <= (await store.hit("k", 60)).resets_in <= 60
    await backend.elapse(1.05)
    assert (await store.hit("k", 1)).count == 1
    assert (await store.hit("k", 60)).count == 3


# --- revocations ----------------------------------------------------------------------


async def test_revocations_last_until_the_latest_deadline(backend: Backend) -> None:
    store = backend.store
    # Two seconds ahead at least: a second's deadline can pass mid-test on a busy machine.
    soon, later = int(backend.now()) + 2, int(backend.now()) + 100
    assert not await store.revoked("g")
    await store.revoke("short", soon)
    await store.revoke("extended", soon)
    await store.revoke("extended", later)
    await store.revoke("kept", later)
    await store.revoke("kept", soon)  # never shortened by a later call
    await store.revoke("past", soon - 5)
    assert [await store.revoked(g) for g in ("short", "extended", "kept", "past")] == [
        True,
        True,
        True,
        False,
    ]
    await backend.elapse(soon - backend.now() + 0.05)
    assert [await store.revoked(g) for g in ("short", "extended", "kept")] == [False, True, True]


# --- tokens bound to holders ----------------------------------------------------------


async def test_bound_tokens_are_kept_per_holder(backend: Backend) -> None:
    store = backend.store
    later = int(backend.now()) + 100
    assert await store.bound("peer:02ab:archive") == []
    await store.bind("peer:02ab:archive", "tok-1", later)
    await store.bind("peer:02ab:weather", "tok-2", later)
    assert await store.bound("peer:02ab:archive") == ["tok-1"]
    assert await store.bound("peer:02ab:weather") == ["tok-2"]
    assert await store.bound("peer:03cd:archive") == []


async def test_a_token_bound_again_is_kept_once_with_its_new_expiry(backend: Backend) -> None:
    store = backend.store
    now = int(backend.now())
    await store.bind("h", "again", now + 100)
    await store.bind("h", "other", now + 150)
    await store.bind("h", "again", now + 200)
    assert await store.bound("h") == ["again", "other"]  # once, now expiring later
    await store.bind("h", "again", now + 120)  # the new expiry stands, even an earlier one
    assert await store.bound("h") == ["other", "again"]


async def test_a_holder_keeps_the_tokens_expiring_last(backend: Backend) -> None:
    store = backend.store
    now = int(backend.now())
    order = [(i * 7) % (MAX_BOUND + 8) for i in range(MAX_BOUND + 8)]  # every i, shuffled
    for i in order:
        await store.bind("h", f"tok-{i:02d}", now + 100 + i)
    latest_first = [f"tok-{i:02d}" for i in reversed(range(8, MAX_BOUND + 8))]
    assert await store.bound("h") == latest_first
    await store.bind("h", "too-soon", now + 100 + 7)  # expires before all the kept ones
    assert await store.bound("h") == latest_first
    await store.bind("h", "latest", now + 1000)  # pushes out the one expiring first
    assert await store.bound("h") == ["latest", *latest_first[:-1]]
    # Ties in expiry: the greater token first, on every backend.
    for token in ("b", "c", "a"):
        await store.bind("ties", token, now + 50)
    assert await store.bound("ties") == ["c", "b", "a"]


async def test_expired_bound_tokens_are_not_returned(backend: Backend) -> None:
    store = backend.store
    # At least half a second ahead: not past already when a second ticks over meanwhile.
    soon, later = math.ceil(backend.now() + 0.5), int(backend.now()) + 100
    await store.bind("h", "short", soon)
    await store.bind("h", "long", later)
    await store.bind("gone", "short", soon)
    assert await store.bound("h") == ["long", "short"]
    await backend.elapse(soon - backend.now() + 0.05)
    assert await store.bound("h") == ["long"]
    assert await store.bound("gone") == []
    await store.bind("gone", "new", later)  # the expired one is not back either
    assert await store.bound("gone") == ["new"]


async def test_binding_with_a_past_expiry_keeps_nothing(backend: Backend) -> None:
    store = backend.store
    now = int(backend.now())
    await store.bind("h", "past", now - 5)
    await store.bind("h", "now", now)  # expires at the current second: already past
    assert await store.bound("h") == []
    await store.bind("h", "kept", now + 100)
    await store.bind("h", "dropped", now + 100)
    await store.bind("h", "dropped", now - 1)  # bound again already expired: dropped
    assert await store.bound("h") == ["kept"]


async def test_memory_drops_holders_whose_tokens_expired() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    for i in range(100):
        await store.bind(f"peer:{i}", "tok", int(clock()) + 1)
    await store.bind("lasting", "tok", int(clock()) + 3600)
    clock.now += 61  # past the sweep interval
    await store.bind("new", "tok", int(clock()) + 10)
    assert set(store._bound) == {"lasting", "new"}


# --- receipts index --------------------------------------------------------------------


async def test_a_receipt_is_listed_once_however_often_completed(backend: Backend) -> None:
    store = backend.store
    first = receipt_at("aa" * 32, 5)
    await paid(store, first)
    # The paywall completes the same receipt again under its checkout's key.
    assert (await store.claim("checkout:c1", first.txid)).outcome is Outcome.NEW
    await store.complete("checkout:c1", first, "tok")
    await store.complete("checkout:c1", first, "tok")  # a retried call
    assert await store.receipts() == [first]
    assert await store.receipt("checkout:c1") == first
    assert await store.receipt(first.txid) == first
    # Completed again with another receipt (a claim taken over): the last one is listed.
    later = receipt_at(first.txid, 9, grant="g-2")
    await store.complete(first.txid, later, "tok-2")
    assert await store.receipts() == [later]
    assert await store.receipts(service="archive", txid=first.txid) == [later]


async def test_a_grant_is_known_once_a_receipt_names_it(backend: Backend) -> None:
    """`sold`: what the admin's POST /revoke asks before saying it revoked a grant."""
    store = backend.store
    assert not await store.sold("g-7")
    await paid(store, receipt_at("ab" * 32, 5, grant="g-7"))
    assert await store.sold("g-7")
    assert not await store.sold("g-8") and not await store.sold("")


async def test_a_receipt_taken_over_by_another_service_moves(backend: Backend) -> None:
    store = backend.store
    await store.complete("tx", receipt_at("tx", 1, "archive"), "tok")
    await store.complete("tx", receipt_at("tx", 2, "weather"), "tok")
    assert await store.receipts(service="archive") == []
    assert await store.receipts(service="weather") == [receipt_at("tx", 2, "weather")]
    assert await store.receipts() == [receipt_at("tx", 2, "weather")]


async def test_receipts_filter_by_time_service_and_txid(backend: Backend) -> None:
    store = backend.store
    a1, a2, a3 = (receipt_at(f"a{i}", i * 10, "archive") for i in (1, 2, 3))
    w1, w2 = (receipt_at(f"w{i}", i * 10, "weather") for i in (1, 2))
    await paid(store, a3, w2, a1, w1, a2)  # completed out of order
    assert await store.receipts() == [a1, w1, a2, w2, a3]  # time, then txid
    assert await store.receipts(since=T0 + 20) == [a2, w2, a3]  # since: included
    assert await store.receipts(until=T0 + 20) == [a1, w1]  # until: excluded
    assert await store.receipts(since=T0 + 11, until=T0 + 30) == [a2, w2]
    assert await store.receipts(service="weather") == [w1, w2]
    assert await store.receipts(service="archive", since=T0 + 15) == [a2, a3]
    assert await store.receipts(service="nobody") == []
    assert await store.receipts(txid="w2") == [w2]
    assert await store.receipts(txid="w2", service="weather", since=T0 + 20) == [w2]
    assert await store.receipts(txid="w2", service="archive") == []
    assert await store.receipts(txid="w2", until=T0 + 20) == []
    assert await store.receipts(txid="w2", after="a2") == [w2]  # (20, w2) sorts after (20, a2)
    assert await store.receipts(txid="w2", after="w2") == []
    assert await store.receipts(txid="unknown") == []
    assert await store.receipts(txid="") == []
    assert await store.receipts(limit=2) == [a1, w1]
    assert await store.receipts(since=T0 + 100) == []
    assert await store.receipts(since=T0 + 30, until=T0 + 10) == []


async def test_pages_return_every_receipt_exactly_once(backend: Backend) -> None:
    store = backend.store
    # 60 receipts over 7 distinct seconds: most ties in time are broken by txid.
    everything = [
        receipt_at(f"{(i * 37) % 101:03d}-{i}", i % 7, "archive" if i % 3 else "weather")
        for i in range(60)
    ]
    await asyncio.gather(*(store.complete(r.txid, r, "tok") for r in everything))
    ordered = sorted(everything, key=lambda r: (r.time, r.txid))
    assert await store.receipts() == ordered

    async def walk(size: int, **filters: Any) -> list[Receipt]:
        seen: list[Receipt] = []
        while True:
            after = seen[-1].txid if seen else None
            page = await store.receipts(limit=size, after=after, **filters)
            assert len(page) <= size
            seen += page
            if len(page) < size:
                return seen

    for size in (1, 7, 10, 60, 61):
        assert await walk(size) == ordered
    weather = [r for r in ordered if r.service == "weather"]
    assert await walk(4, service="weather") == weather
    middle = [r for r in ordered if T0 + 2 <= r.time < T0 + 5]
    assert await walk(5, since=T0 + 2, until=T0 + 5) == middle
    # A cursor from another service's receipt still marks a place in time.
    pivot = next(r for r in ordered if r.service == "archive" and r.time == T0 + 3)
    later = [r for r in weather if (r.time, r.txid) > (pivot.time, pivot.txid)]
    assert await store.receipts(service="weather", after=pivot.txid) == later
    # A receipt added meanwhile is found when it sorts after the cursor.
    first_page = await store.receipts(limit=30)
    late = receipt_at("zz-late", 6)
    await store.complete(late.txid, late, "tok")
    rest = await store.receipts(after=first_page[-1].txid, limit=MAX_PAGE)
    assert first_page + rest == [*ordered, late]


async def test_receipts_refuse_bad_pages(backend: Backend) -> None:
    store = backend.store
    await paid(store, receipt_at("known", 1))
    with pytest.raises(ValueError):
        await store.receipts(after="never-indexed")
    with pytest.raises(ValueError):
        await store.receipts(after="")
    with pytest.raises(ValueError):
        await store.receipts(limit=0)
    assert await store.receipts(limit=MAX_PAGE + 1) == [receipt_at("known", 1)]  # capped


# --- statistics -----------------------------------------------------------------------


async def test_concurrent_counts_sum_exactly(backend: Backend) -> None:
    store = backend.store
    await asyncio.gather(
        *(
            store.count("2024-05-01", "archive", "GET /records/*", requests=1, satoshis=i)
            for i in range(200)
        )
    )
    assert await store.stats(since_day="2024-05-01", until_day="2024-05-01") == [
        DayStats("2024-05-01", "archive", "GET /records/*", {"requests": 200, "satoshis": 19900})
    ]


async def test_stats_by_day_range_and_service(backend: Backend) -> None:
    store = backend.store
    await store.count("2024-02-28", "weather", "GET /now", requests=3, challenges=1)
    await store.count("2024-02-29", "archive", "GET /a", requests=1, payments=1, satoshis=50)
    await store.count("2024-02-29", "archive", "POST /a", requests=2, upstream_errors=0)
    await store.count("2024-02-29", "weather", "GET /now", metered_msat=1500)
    await store.count("2024-03-01", "archive", "GET /a", refunds_msat=7)
    await store.count("2024-03-01", "archive", "GET /a", requests=0)  # a zero adds nothing
    await store.count("2024-03-01", "empty", "GET /", requests=0)
    every = await store.stats(since_day="2024-02-01", until_day="2024-03-31")
    assert every == [
        DayStats("2024-02-28", "weather", "GET /now", {"requests": 3, "challenges": 1}),
        DayStats("2024-02-29", "archive", "GET /a", {"requests": 1, "payments": 1, "satoshis": 50}),
        DayStats("2024-02-29", "archive", "POST /a", {"requests": 2}),
        DayStats("2024-02-29", "weather", "GET /now", {"metered_msat": 1500}),
        DayStats("2024-03-01", "archive", "GET /a", {"refunds_msat": 7}),
    ]
    assert await store.stats(since_day="2024-02-29", until_day="2024-02-29") == every[1:4]
    assert await store.stats(since_day="2024-02-29", until_day="2024-03-01") == every[1:]
    assert await store.stats(since_day="2024-02-01", until_day="2024-03-31", service="archive") == [
        every[1],
        every[2],
        every[4],
    ]
    assert await store.stats(since_day="2024-01-01", until_day="2024-02-27") == []
    assert await store.stats(since_day="2024-03-01", until_day="2024-02-01") == []
    assert await store.stats(since_day="2024-02-01", until_day="2024-03-31", service="x") == []


async def test_count_and_stats_refuse_bad_input(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(ValueError):
        await store.count("2024-05-01", "s", "r", requests=-1)
    for day in ("2024-5-1", "20240501", "2024-02-30", "yesterday", ""):
        with pytest.raises(ValueError):
            await store.count(day, "s", "r", requests=1)
        with pytest.raises(ValueError):
            await store.stats(since_day=day, until_day="2024-05-01")
    with pytest.raises(ValueError):
        await store.stats(since_day="2000-01-01", until_day="2024-05-01")  # > MAX_DAYS
    last = (datetime.date(2015, 1, 1) + datetime.timedelta(days=MAX_DAYS - 1)).isoformat()
    assert await store.stats(since_day="2015-01-01", until_day=last) == []  # just allowed
    assert await store.stats(since_day="2024-05-01", until_day="2024-05-01") == []


# --- ids and health -------------------------------------------------------------------


async def test_odd_ids_are_distinct_and_work(backend: Backend) -> None:
    store = backend.store
    for i, name in enumerate(WEIRD_IDS):
        assert await store.credit(name, i + 1, "tx") == (i + 1, True)
        assert (await store.claim(name, PURCHASE)).outcome is Outcome.NEW
        assert (await store.hit(name, 60)).count == 1
        await store.revoke(name, int(backend.now()) + 60)
        await store.bind(name, f"tok-{i}", int(backend.now()) + 60)
    for i, name in enumerate(WEIRD_IDS):
        assert await store.reserve(name, 1, name, 30) == i
        assert await store.revoked(name)
        assert await store.bound(name) == [f"tok-{i}"]


async def test_odd_names_in_receipts_and_stats(backend: Backend) -> None:
    store = backend.store
    for i, name in enumerate(WEIRD_IDS):
        await store.complete(f"claim-{i}", receipt_at(name, i, service=name), "tok")
        await store.count("2024-05-01", name, f'GET /"{name}"/*', requests=i + 1)
    listed = await store.receipts()
    assert [r.txid for r in listed] == WEIRD_IDS
    for i, name in enumerate(WEIRD_IDS):
        assert await store.receipts(service=name) == [listed[i]]
        assert await store.receipts(txid=name) == [listed[i]]
        if i:
            assert (await store.receipts(after=WEIRD_IDS[i - 1], limit=1)) == [listed[i]]
    stats = await store.stats(since_day="2024-05-01", until_day="2024-05-01")
    assert sorted((s.service, s.route, s.counters["requests"]) for s in stats) == sorted(
        (name, f'GET /"{name}"/*', i + 1) for i, name in enumerate(WEIRD_IDS)
    )


async def test_ping_and_close(backend: Backend) -> None:
    await backend.store.ping()
    await backend.store.close()
    await backend.store.close()  # twice is harmless


# --- Redis only -----------------------------------------------------------------------


async def test_every_script_touches_one_slot(redis_cluster: Cluster) -> None:
    """Run every operation on the cluster and check the keys each script got."""
    store = redis_store(redis_cluster.url)
    calls: list[list[str]] = []
    run = store._run

    async def spy(script: Any, keys: list[str], args: list[Any]) -> Any:
        calls.append(keys)
        return await run(script, keys, args)

    store._run = spy  # type: ignore[method-assign]
    try:
        for name in ["tx", *WEIRD_IDS]:
            await exercise(store, name)
    finally:
        await store.close()
    assert len(calls) == 15 * (1 + len(WEIRD_IDS))
    for keys in calls:
        # One brace pair (ids escaped), save a service name after the index's tag.
        escaped = [k for k in keys if not k.startswith(store.keys.by_service())]
        assert all(k.count("{") == 1 and k.count("}") == 1 for k in escaped), keys
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
        assert len({k[k.index("{") : k.index("}") + 1] for k in keys}) == 1, keys


async def exercise(store: Store, name: str) -> None:
    """Every scripted operation once."""
    await store.claim(name, PURCHASE)
    await store.release(name, PURCHASE)
    await store.complete(name, receipt_for(name), "tok")
    await store.credit(name, 5, name)
    await store.reserve(name, 2, name, 30)
    await store.settle(name, name, 1)
    await store.refund(name, name)
    await store.balance(name)
    await store.hit(name, 60)
    await store.revoke(name, int(time.time()) + 60)
    await store.receipts(service=name, after=name)
    await store.count("2024-05-01", name, name, requests=1, satoshis=2)
    await store.bind(name, name, int(time.time()) + 60)
    await store.bound(name)


def test_tags_are_never_empty_and_escape_braces() -> None:
    assert tag("") == "{%}"
    assert tag("a{b}c") == "{a%7Bb%7Dc}"
    assert tag("%7B") == "{%257B}"  # distinct from the escaped "{"
    assert len({tag(x) for x in WEIRD_IDS}) == len(WEIRD_IDS)


async def test_claims_in_progress_expire_but_receipts_stay(redis_server: RedisServer) -> None:
    store = redis_store(redis_server.url)
    raw = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await store.claim("gg", PURCHASE)
        (key,) = store.keys.claim("gg")
        assert 3500 < await raw.ttl(key) <= 3600
        await store.complete("gg", receipt_for("gg"), "tok")
        assert await raw.ttl(key) == -1  # kept for good
    finally:
        await raw.aclose()
        await store.close()


async def test_complete_indexes_first_and_a_retry_finishes(redis_server: RedisServer) -> None:
    """Should the claim write fail after the index write, the same call again completes it."""
    store = redis_store(redis_server.url)
    run = store._run

    async def claim_write_fails(script: Any, keys: list[str], args: list[Any]) -> Any:
        if script is store._complete:
            raise StoreUnavailable("connection lost")
        return await run(script, keys, args)

    r = receipt_at("ii", 1)
    try:
        await store.claim("ii", f"{r.service}\n{r.resource}")
        store._run = claim_write_fails  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable):
            await store.complete("ii", r, "tok")
        store._run = run  # type: ignore[method-assign]
        assert await store.receipts() == [r]  # listed: the payment was taken
        assert (await store.claim("ii", f"{r.service}\n{r.resource}")).receipt is None
        await store.complete("ii", r, "tok")  # the payer's retry
        assert await store.receipt("ii") == r
        assert await store.receipts() == [r]
    finally:
        await store.close()


async def test_a_holders_key_expires_with_its_latest_token(redis_server: RedisServer) -> None:
    store = redis_store(redis_server.url)
    raw = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        now = int(time.time())
        (key,) = store.keys.bound("peer:02ab:archive")
        await store.bind("peer:02ab:archive", "later", now + 300)
        await store.bind("peer:02ab:archive", "sooner", now + 100)
        assert await raw.execute_command("EXPIRETIME", key) == now + 300
        await store.bind("peer:02ab:archive", "later", now + 200)  # its expiry moved
        assert await raw.execute_command("EXPIRETIME", key) == now + 200
        await store.bind("peer:02ab:archive", "later", now - 1)
        await store.bind("peer:02ab:archive", "sooner", now - 1)
        assert await raw.exists(key) == 0  # nothing kept: no key left behind
    finally:
        await raw.aclose()
        await store.close()


async def test_a_retried_claim_call_is_still_new(redis_server: RedisServer) -> None:
    """redis-py may resend a script whose reply was lost: the owner nonce makes it NEW."""
    store = redis_store(redis_server.url)
    try:
        keys, args = store.keys.claim("hh"), [PURCHASE, "owner-1", 60]
        assert (await store._run(store._claim, keys, args))[0] == "new"
        assert (await store._run(store._claim, keys, args))[0] == "new"
        assert (await store.claim("hh", PURCHASE)).outcome is Outcome.SAME
    finally:
        await store.close()


async def test_store_fails_closed_and_heals_when_redis_returns(tmp_path: Path) -> None:
    need_redis()
    server = RedisServer(tmp_path)
    with running(server):
        store = redis_store(server.url, timeout=1.0)
        await store.credit("t", 5, "tx")
        server.stop()
        started = time.monotonic()
        failures = await asyncio.gather(*every_operation(store, "t"), return_exceptions=True)
        assert all(isinstance(f, StoreUnavailable) for f in failures), failures
        assert time.monotonic() - started < 1.5  # refused connections fail fast
        server.start()  # same port, empty data (no persistence)
        await store.ping()  # the same store object: no restart needed
        assert (await store.claim("tx", PURCHASE)).outcome is Outcome.NEW
        assert await store.credit("t", 5, "tx") == (5, True)
        await store.close()


def every_operation(store: Store, name: str) -> list[Any]:
    return [
        store.ping(),
        store.claim(name, PURCHASE),
        store.complete(name, receipt_for(name), "tok"),
        store.release(name, PURCHASE),
        store.receipt(name),
        store.credit(name, 1, name),
        store.reserve(name, 1, name, 30),
        store.settle(name, name, 1),
        store.refund(name, name),
        store.balance(name),
        store.hit(name, 60),
        store.revoke(name, int(time.time()) + 60),
        store.revoked(name),
        store.receipts(),
        store.receipts(service=name, after=name),
        store.count("2024-05-01", name, "GET /", requests=1),
        store.stats(since_day="2024-05-01", until_day="2024-05-07"),
        store.bind(name, "tok", int(time.time()) + 60),
        store.bound(name),
    ]


async def test_a_frozen_redis_fails_within_the_timeout(tmp_path: Path) -> None:
    need_redis()
    server = RedisServer(tmp_path)
    with running(server):
        store = redis_store(server.url, timeout=0.3)
        await store.ping()
        server.pause()  # connections open, no answers: only the timeout ends a call
        try:
            for operation in (store.ping(), store.claim("frozen", PURCHASE)):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match=r"no answer|Timeout"):
                    await operation
                assert time.monotonic() - started < 0.8
        finally:
            server.resume()
        # Timed-out connections were dropped: later replies cannot be mixed up.
        assert (await store.claim("after", PURCHASE)).outcome is Outcome.NEW
        assert await store.credit("t", 3, "tx") == (3, True)
        await store.close()


async def test_unreachable_url_is_unavailable_not_a_redis_error() -> None:
    port = free_port()
    for url in (f"redis://127.0.0.1:{port}/0", f"redis+cluster://127.0.0.1:{port}"):
        store = RedisStore.from_url(url, timeout=0.5)
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.claim("x", PURCHASE)
        await store.close()


async def test_sentinel_url_finds_the_master(tmp_path: Path) -> None:
    need_redis()
    setup = SentinelSetup(tmp_path)
    with running(setup):
        store = redis_store(setup.url)
        try:
            await store.ping()
            assert (await store.claim("ss", PURCHASE)).outcome is Outcome.NEW
            assert await store.credit("t", 4, "tx") == (4, True)
        finally:
            await store.close()


@pytest.mark.parametrize(
    "url",
    [
        "memcached://127.0.0.1:11211",
        "redis+sentinel://127.0.0.1:26379",  # no service name
        "redis+sentinel://127.0.0.1:26379/svc/zero",
        "redis+cluster://127.0.0.1:7000/1",  # clusters have only db 0
        "redis+cluster://127.0.0.1",  # no port
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        RedisStore.from_url(url)


def test_prefix_may_not_hold_a_hash_tag() -> None:
    with pytest.raises(ValueError):
        RedisStore.from_url("redis://127.0.0.1:1/0", prefix="{farebox}:")

"""Tab leases (gateway/store/leases.py) on a real Redis: money exact across workers.

Each `Leases` here is one worker's; two on one Redis are two workers (or two
machines). The figures a payer would see are asserted: what was served,
what the tab's balance says, what comes back after a crash.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.store import LeaseSync
from gateway.store.leases import Exhausted, Leases
from gateway.store.redis import RedisStore
from tests.redis_servers import Cluster, RedisServer, need_redis, running

TAB = "t-lease"
PRICE = 10_000  # msat a request holds and is charged


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis()
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    with running(redis):
        yield redis


@pytest.fixture
async def store(server: RedisServer) -> AsyncIterator[RedisStore]:
    opened = RedisStore.from_url(server.url, prefix=f"t{random.getrandbits(40)}:")
    yield opened
    await opened.close()


async def spendable(store: RedisStore, tab: str = TAB) -> int:
    """The tab's balance outside every lease and hold (what a new lease may take)."""
    return int(await store._client.hget(store.keys.tab(tab)[0], "balance") or 0)


async def serve(leases: Leases, n: int, charge: int = PRICE, tab: str = TAB) -> list[bool]:
    """n requests at once on one worker; True for each one served."""

    async def one() -> bool:
        try:
            hold = await leases.hold(tab, PRICE)
        except Exhausted:
            return False
        await asyncio.sleep(random.random() / 100)  # the upstream answering
        await leases.settle(hold, charge)
        return True

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_two_workers_serve_exactly_what_the_tab_pays_for(store: RedisStore) -> None:
    await store.credit(TAB, 100 * PRICE, "top-up")
    a, b = Leases(store), Leases(store)
    served = await asyncio.gather(serve(a, 500), serve(b, 500))
    assert sum(served[0]) + sum(served[1]) == 100
    assert sum(served[0]) > 0 and sum(served[1]) > 0  # both workers had a share
    await a.close()
    await b.close()
    assert await store.balance(TAB) == 0


async def test_a_worker_short_gets_what_another_holds_free(store: RedisStore) -> None:
    """One worker leased a slice; the other, short, recalls it and is served."""
    await store.credit(TAB, 40 * PRICE, "top-up")
    a, b = Leases(store, idle=60), Leases(store, idle=60)
    assert await serve(a, 1) == [True]  # a leases a quarter: ten requests' worth
    assert await spendable(store) == 30 * PRICE
    assert await serve(b, 39) == [True] * 39  # with a's nine, given back on recall
    assert await serve(b, 1) == [False]
    for leases in (a, b):
        await leases.close()
    assert await store.balance(TAB) == 0


async def test_unused_slices_go_back_and_the_balance_counts_them(store: RedisStore) -> None:
    await store.credit(TAB, 50 * PRICE, "top-up")
    a = Leases(store, flush=0.01, idle=0.05)
    assert await serve(a, 3, charge=PRICE // 2) == [True] * 3
    left = 50 * PRICE - 3 * (PRICE // 2)
    assert await a.balance(TAB) == left  # the payer's balance, at once
    assert await spendable(store) < left  # while the slice is out
    for _ in range(100):
        if await spendable(store) == left:
            break
        await asyncio.sleep(0.02)
    assert await spendable(store) == left  # given back after idle, charges taken
    await a.close()


async def test_a_crashed_worker_s_slice_returns_to_the_tab(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    await store.credit(TAB, 50 * PRICE, "top-up")
    dead = Leases(store, ttl=1, idle=60, flush=60)  # never syncs: a worker that died
    assert await serve(dead, 2) == [True, True]
    assert await spendable(store) < 48 * PRICE
    await asyncio.sleep(1.2)
    # Its slice came back whole: the two charges it never synced are the payer's.
    assert await store.balance(TAB) == 50 * PRICE
    other = Leases(store)
    assert sum(await serve(other, 60)) == 50
    # The dead worker wakes: its charges are not taken from anyone, and it says so.
    with caplog.at_level(logging.WARNING, logger="farebox.tabs"):
        await dead.close()
    assert "had gone back to the tab" in caplog.text
    await other.close()
    assert await store.balance(TAB) == 0


async def test_a_resent_sync_charges_once(store: RedisStore) -> None:
    await store.credit(TAB, 10 * PRICE, "top-up")
    grow = LeaseSync(seq=1, need=5 * PRICE)
    first = await store.lease(TAB, "lease:w", grow)
    assert first is not None and first.held >= 5 * PRICE
    charge = LeaseSync(seq=2, charged=PRICE, expect=first.held)
    once = await store.lease(TAB, "lease:w", charge)
    again = await store.lease(TAB, "lease:w", charge)  # the same batch, resent
    assert once is not None and again is not None
    assert again.held == once.held == first.held - PRICE
    # A later call with the same total (the first ran after its caller gave up
    # on it): charges are a running total, taken once.
    later = await store.lease(TAB, "lease:w", LeaseSync(seq=3, charged=PRICE, expect=first.held))
    assert later is not None and later.held == once.held and later.charged == PRICE
    release = await store.lease(
        TAB, "lease:w", LeaseSync(seq=4, charged=PRICE, release=True, expect=once.held)
    )
    assert release is not None and release.held == 0
    assert await store.balance(TAB) == 9 * PRICE


async def test_a_hold_settled_twice_is_charged_once(store: RedisStore) -> None:
    await store.credit(TAB, 10 * PRICE, "top-up")
    leases = Leases(store)
    hold = await leases.hold(TAB, PRICE)
    await leases.settle(hold, PRICE)
    await leases.settle(hold, PRICE)  # a second call changes nothing
    await leases.close()
    assert await store.balance(TAB) == 9 * PRICE


async def test_no_such_tab_is_exhausted_at_zero(store: RedisStore) -> None:
    leases = Leases(store)
    with pytest.raises(Exhausted) as short:
        await leases.hold("t-none", PRICE)
    assert short.value.balance == 0
    await leases.close()


async def test_a_request_never_waits_past_the_recall_for_a_silent_worker(
    store: RedisStore,
) -> None:
    """A worker holding money that never answers: a short request is refused in time."""
    await store.credit(TAB, 4 * PRICE, "top-up")
    silent = Leases(store, flush=60, idle=60)
    hold = await silent.hold(TAB, PRICE)  # leases its slice, then hangs mid-request
    other = Leases(store, recall=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Exhausted) as short:
        await other.hold(TAB, 4 * PRICE)  # more than the tab holds outside that slice
    assert 0.25 <= loop.time() - started < 2
    assert short.value.balance == 3 * PRICE
    await silent.settle(hold, PRICE)
    for leases in (silent, other):
        await leases.close()
    assert await store.balance(TAB) == 3 * PRICE


async def test_leases_on_a_cluster(tmp_path: Path) -> None:
    """Every key of a lease in the tab's slot: the scripts run on a cluster."""
    need_redis()
    cluster = Cluster(tmp_path / "cluster")
    with running(cluster):
        store = RedisStore.from_url(cluster.url)
        try:
            await store.credit(TAB, 20 * PRICE, "top-up")
            a, b = Leases(store), Leases(store)
            served = await asyncio.gather(serve(a, 15), serve(b, 15))
            assert sum(served[0]) + sum(served[1]) == 20
            await a.close()
            await b.close()
            assert await store.balance(TAB) == 0
        finally:
            await store.close()

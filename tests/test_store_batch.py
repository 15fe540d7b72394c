"""Store calls asked for within one loop turn go out together: gateway/store/batch.py.

The coalescer alone first (a stand-in `send`), then the Redis store's batched
operations (reserve, settle, refund, balance, hit, revoked) against real
redis-server processes: a single server, a 3-master cluster and a sentinel,
on free ports (tests/redis_servers.py). Every caller must get its own answer,
and the balances must come out exact however the calls were batched.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.store import StoreUnavailable, Window
from gateway.store.batch import Coalescer
from gateway.store.redis import RedisStore
from tests.redis_servers import Cluster, RedisServer, SentinelSetup, need_redis, running

# --- the coalescer alone --------------------------------------------------------------


class Recorder:
    """A `send` that answers each op with its double, and remembers every batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: asyncio.Event | None = None  # when set: batches wait for it

    async def __call__(self, ops: list[int]) -> list[int | BaseException]:
        self.batches.append(list(ops))
        if self.gate is not None:
            await self.gate.wait()
        return [ValueError(f"odd {op}") if op < 0 else op * 2 for op in ops]


async def test_calls_of_one_turn_share_one_batch_and_get_their_own_replies() -> None:
    send = Recorder()
    batch: Coalescer[int, int] = Coalescer(send)
    assert await asyncio.gather(*(batch(i) for i in range(50))) == [i * 2 for i in range(50)]
    assert send.batches == [list(range(50))]


async def test_a_lone_call_is_sent_on_the_next_loop_turn() -> None:
    send = Recorder()
    batch: Coalescer[int, int] = Coalescer(send)
    call = asyncio.create_task(batch(7))
    # Turns: the call queues its op; the batch is made; its task sends it.
    # Nothing waits for a timer (sleep(0) lets no time pass for one).
    for _ in range(3):
        await asyncio.sleep(0)
    assert send.batches == [[7]]
    assert await call == 14


async def test_a_burst_beyond_the_cap_goes_in_several_batches() -> None:
    send = Recorder()
    batch: Coalescer[int, int] = Coalescer(send, most=128)
    replies = await asyncio.gather(*(batch(i) for i in range(300)))
    assert replies == [i * 2 for i in range(300)]
    assert [len(b) for b in send.batches] == [128, 128, 44]
    assert [op for b in send.batches for op in b] == list(range(300))  # in the order asked


async def test_an_error_of_one_op_reaches_only_its_caller() -> None:
    batch: Coalescer[int, int] = Coalescer(Recorder())
    replies = await asyncio.gather(batch(1), batch(-1), batch(2), return_exceptions=True)
    assert replies[0] == 2 and replies[2] == 4
    assert isinstance(replies[1], ValueError) and str(replies[1]) == "odd -1"


async def test_a_failed_batch_fails_every_caller() -> None:
    async def broken(ops: list[int]) -> list[int]:
        raise StoreUnavailable("connection refused")

    batch: Coalescer[int, int] = Coalescer(broken)
    replies = await asyncio.gather(*(batch(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in replies)


async def test_a_reply_count_that_does_not_match_fails_every_caller() -> None:
    async def short(ops: list[int]) -> list[int]:
        return ops[:-1]

    batch: Coalescer[int, int] = Coalescer(short)
    replies = await asyncio.gather(*(batch(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in replies)


async def test_a_caller_cancelled_before_the_batch_is_sent_is_left_out() -> None:
    send = Recorder()
    batch: Coalescer[int, int] = Coalescer(send)
    gone = asyncio.create_task(batch(1))
    kept = asyncio.create_task(batch(2))
    await asyncio.sleep(0)  # both queued, not sent yet
    gone.cancel()
    assert await kept == 4
    assert send.batches == [[2]]
    assert gone.cancelled()


async def test_a_caller_cancelled_in_flight_leaves_its_op_running() -> None:
    send = Recorder()
    send.gate = asyncio.Event()
    batch: Coalescer[int, int] = Coalescer(send)
    gone = asyncio.create_task(batch(1))
    kept = asyncio.create_task(batch(2))
    while not send.batches:
        await asyncio.sleep(0)
    gone.cancel()
    send.gate.set()
    assert await kept == 4
    assert send.batches == [[1, 2]]  # sent with its batch, its reply dropped
    assert gone.cancelled()


async def test_batches_do_not_wait_for_each_other() -> None:
    send = Recorder()
    send.gate = asyncio.Event()
    batch: Coalescer[int, int] = Coalescer(send)
    first = asyncio.create_task(batch(1))
    while not send.batches:
        await asyncio.sleep(0)
    second = asyncio.create_task(batch(2))
    while len(send.batches) < 2:
        await asyncio.sleep(0)
    assert batch.in_flight == 2  # the second went out while the first had no answer
    send.gate.set()
    assert (await first, await second) == (2, 4)


def test_a_batch_holds_at_least_one_op() -> None:
    with pytest.raises(ValueError):
        Coalescer(Recorder(), most=0)


# --- on Redis -------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    need_redis()
    setup = SentinelSetup(tmp_path_factory.mktemp("sentinel"))
    with running(setup):
        yield setup


@dataclass
class Layout:
    url: str  # what the store is given
    masters: list[str]  # redis:// URLs of the servers that hold the keys


@pytest.fixture(params=["redis", "cluster", "sentinel"])
def layout(request: pytest.FixtureRequest) -> Layout:
    if request.param == "cluster":
        cluster: Cluster = request.getfixturevalue("redis_cluster")
        return Layout(cluster.url, [node.url for node in cluster.nodes])
    if request.param == "sentinel":
        setup: SentinelSetup = request.getfixturevalue("redis_sentinel")
        return Layout(setup.url, [setup.master.url])
    server: RedisServer = request.getfixturevalue("redis_server")
    return Layout(server.url, [server.url])


def fresh_store(url: str, **options: Any) -> RedisStore:
    return RedisStore.from_url(url, prefix=f"b{secrets.token_hex(4)}:", **options)


class Batches:
    """Counts the batches a store sends (each is one round trip per node)."""

    def __init__(self, store: RedisStore) -> None:
        self.sizes: list[int] = []
        send = store._send

        async def counted(ops: list[Any]) -> list[Any]:
            self.sizes.append(len(ops))
            return await send(ops)

        store._batch = Coalescer(counted)


async def test_concurrent_tab_calls_are_exact_and_share_round_trips(layout: Layout) -> None:
    """Two instances on one tab: 1,000 holds against 600, then every settle, twice."""
    prefix = f"b{secrets.token_hex(4)}:"
    stores = [RedisStore.from_url(layout.url, prefix=prefix) for _ in range(2)]
    counts = [Batches(store) for store in stores]
    one, two = stores
    try:
        await one.credit("tab", 600, "top-up")
        held = await asyncio.gather(
            *(stores[i % 2].reserve("tab", 1, f"r{i}", 30) for i in range(1000))
        )
        granted = [i for i, left in enumerate(held) if left is not None]
        assert sorted(left for left in held if left is not None) == list(range(600))
        assert await one.balance("tab") == 0
        # Odd ones charged, even ones refunded; each settled twice, once by each instance.
        await asyncio.gather(
            *(
                store.settle("tab", f"r{i}", 1) if i % 2 else store.refund("tab", f"r{i}")
                for i in granted
                for store in stores
            )
        )
        assert await two.balance("tab") == sum(1 for i in granted if i % 2 == 0)
        # 2,200 calls went out in batches of up to 128, not one by one.
        sizes = counts[0].sizes + counts[1].sizes
        assert sum(sizes) == 1000 + 1200 + 2
        assert len(sizes) < 40
    finally:
        await one.close()
        await two.close()


async def test_a_batch_spans_tabs_on_every_cluster_node(redis_cluster: Cluster) -> None:
    store = fresh_store(redis_cluster.url)
    counts = Batches(store)
    try:
        tabs = [f"tab-{i}" for i in range(30)]
        slots = {key_slot(store.keys.tab(t)[0].encode()) for t in tabs}
        assert min(slots) < 5461 and max(slots) > 10922  # the first and the last master
        for t in tabs:
            await store.credit(t, 100, "top-up")
        left = await asyncio.gather(*(store.reserve(t, n + 1, "r", 30) for n, t in enumerate(tabs)))
        assert left == [100 - (n + 1) for n in range(len(tabs))]
        assert counts.sizes == [len(tabs)]  # one batch: one pipeline per node
        after = await asyncio.gather(*(store.settle(t, "r", 1) for t in tabs))
        assert after == [99] * len(tabs)
    finally:
        await store.close()


async def test_an_error_in_one_op_fails_only_its_caller(layout: Layout) -> None:
    store = fresh_store(layout.url)
    counts = Batches(store)
    try:
        await store.credit("tab", 10, "top-up")
        # A counter key that holds a hash: the `hit` script fails there (WRONGTYPE).
        (counter,) = store.keys.hit("odd", 60)
        await store._client.hset(counter, "not", "a counter")
        replies = await asyncio.gather(
            store.reserve("tab", 4, "r", 30),
            store.hit("odd", 60),
            store.hit("fine", 60),
            store.balance("tab"),
            return_exceptions=True,
        )
        assert counts.sizes == [4]
        assert replies[0] == 6 and replies[3] == 6
        assert isinstance(replies[1], StoreUnavailable) and "WRONGTYPE" in str(replies[1])
        assert isinstance(replies[2], Window) and replies[2].count == 1
    finally:
        await store.close()


async def test_scripts_flushed_from_the_servers_are_loaded_again(layout: Layout) -> None:
    """SCRIPT FLUSH (as after a restart or a failover): loaded again, every op run once."""
    store = fresh_store(layout.url)
    try:
        await store.credit("tab", 100, "top-up")
        assert await store.reserve("tab", 10, "warm", 30) == 90  # the scripts are loaded
        for master in layout.masters:
            raw = Redis.from_url(master)
            await raw.script_flush()
            await raw.aclose()
        replies = await asyncio.gather(
            *(store.reserve("tab", 1, f"r{i}", 30) for i in range(20)),
            store.settle("tab", "warm", 4),
            store.hit("k", 60),
            store.revoked("nobody"),
        )
        assert replies[:20] == list(range(89, 69, -1))  # each held once, in the order asked
        assert replies[20] == 76  # 6 of the 10 held came back
        assert isinstance(replies[21], Window) and replies[21].count == 1
        assert replies[22] is False
        assert await store.balance("tab") == 76
    finally:
        await store.close()


async def test_a_redis_that_dies_mid_batch_fails_every_caller_then_heals(tmp_path: Path) -> None:
    need_redis()
    server = RedisServer(tmp_path)
    with running(server):
        store = fresh_store(server.url, timeout=1.0)
        await store.credit("tab", 100, "top-up")
        assert await store.reserve("tab", 1, "before", 30) == 99
        server.pause()  # the batch below goes out and is never answered...
        calls = asyncio.gather(
            *(store.reserve("tab", 1, f"r{i}", 30) for i in range(30)), return_exceptions=True
        )
        while store._batch.in_flight == 0:
            await asyncio.sleep(0)
        assert server.process is not None
        server.process.kill()  # ...for the server dies with it in flight
        server.process.wait()
        server.process = None
        failures = await calls
        assert all(isinstance(f, StoreUnavailable) for f in failures), failures
        server.start()  # same port, empty (no persistence): NOSCRIPT on the next batch
        await store.credit("tab", 50, "again")
        replies = await asyncio.gather(*(store.reserve("tab", 1, f"s{i}", 30) for i in range(10)))
        assert replies == list(range(49, 39, -1))
        await store.close()


async def test_a_frozen_redis_times_out_the_batch_and_holds_stay_exact(tmp_path: Path) -> None:
    need_redis()
    server = RedisServer(tmp_path)
    with running(server):
        store = fresh_store(server.url, timeout=0.3)
        await store.credit("tab", 100, "top-up")
        server.pause()
        try:
            failures = await asyncio.gather(
                *(store.reserve("tab", 1, f"r{i}", 30) for i in range(20)),
                store.hit("k", 60),
                return_exceptions=True,
            )
        finally:
            server.resume()
        assert all(isinstance(f, StoreUnavailable) for f in failures), failures
        # The server may still run the timed-out batch when it wakes (the
        # commands reached it): a caller that tries again holds each id once,
        # and no late reply is taken for a new one.
        again = await asyncio.gather(*(store.reserve("tab", 1, f"r{i}", 30) for i in range(20)))
        assert all(left is not None for left in again)
        assert await store.balance("tab") == 80
        await store.close()


async def test_a_hold_whose_caller_was_cancelled_expires_by_ttl(redis_server: RedisServer) -> None:
    store = fresh_store(redis_server.url)
    try:
        await store.credit("tab", 10, "top-up")
        call = asyncio.create_task(store.reserve("tab", 4, "orphan", 1))
        while store._batch.in_flight == 0:
            await asyncio.sleep(0)
        call.cancel()  # the request went away while its hold was on its way
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await store.balance("tab") == 6  # held all the same...
        await asyncio.sleep(1.1)
        assert await store.balance("tab") == 10  # ...until it expired: back on the tab
    finally:
        await store.close()

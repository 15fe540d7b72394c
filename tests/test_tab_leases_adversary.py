"""Adversarial tests of tab leases (gateway/store/leases.py) on a real Redis.

Each `Leases` is one worker; several on one real redis-server are several
workers or machines. Every test asserts a money property a payer or the
operator would see: what was served against what the tab paid, what the
tab's balance says afterwards. Redis is paused (SIGSTOP), or cut off from
one worker by a TCP relay, to make the interleavings the tests need; nothing
inside the gateway is patched.

The first review of the leases found seven money bugs (a sync that timed
out but ran, charged again; a give-back that timed out but ran, spent again;
close() during a sync; a hold on a lease being given back; a worker cut off
or stalled past its ttl spending its slice; money freed after a recall
refused): each has a test here, with the tests of what held under attack.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.store import StoreUnavailable
from gateway.store.leases import SYNC_HOLDS, Exhausted, Hold, Leases
from gateway.store.redis import RedisStore
from tests.redis_servers import HOST, Cluster, RedisServer, need_redis, running
from tests.test_tab_leases import serve, spendable

TAB = "t-adv"
PRICE = 10_000  # msat a request holds (and, unless said, is charged)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis()
    redis = RedisServer(tmp_path_factory.mktemp("redis-adv"))
    with running(redis):
        yield redis


@pytest.fixture
def prefix() -> str:
    return f"a{random.getrandbits(40)}:"


@pytest.fixture
async def store(server: RedisServer, prefix: str) -> AsyncIterator[RedisStore]:
    opened = RedisStore.from_url(server.url, prefix=prefix)
    yield opened
    await opened.close()


@pytest.fixture
async def quick(server: RedisServer, prefix: str) -> AsyncIterator[RedisStore]:
    """The same keys as `store`, through a client that gives up after 0.3 s."""
    opened = RedisStore.from_url(server.url, prefix=prefix, timeout=0.3)
    yield opened
    await opened.close()


@contextlib.contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    server.pause()
    try:
        yield
    finally:
        server.resume()


async def until(condition, limit: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


async def drain(leases: Leases, charge: int = PRICE, most: int = 10_000) -> int:
    """Serve requests one after another on `leases` until the tab refuses; how many."""
    served = 0
    for _ in range(most):
        try:
            hold = await leases.hold(TAB, PRICE)
        except Exhausted:
            return served
        await leases.settle(hold, charge)
        served += 1
    return served


async def drain_n(leases: Leases, n: int, charge: int = PRICE) -> int:
    """Serve up to n requests one after another; how many were served."""
    served = 0
    for _ in range(n):
        try:
            hold = await leases.hold(TAB, PRICE)
        except (Exhausted, StoreUnavailable):
            continue
        await leases.settle(hold, charge)
        served += 1
    return served


class Relay:
    """A TCP relay in front of Redis for one worker: `cut()` drops every byte both ways.

    A network partition between one worker and Redis: what the worker sends
    never arrives (unlike a paused Redis, which runs it later)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.cut_off = False
        self.drop_replies = 0  # the next n reads from Redis are dropped, the connection reset
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://{HOST}:{self._server.sockets[0].getsockname()[1]}/0"

    def cut(self) -> None:
        self.cut_off = True

    def heal(self) -> None:
        self.cut_off = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(HOST, self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if src is not reader and self.drop_replies > 0:
                        self.drop_replies -= 1  # the command ran; its reply is lost
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    if not self.cut_off:
                        dst.write(data)
                        await dst.drain()
            dst.close()

        for pair in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(pump(*pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


# --- a sync whose reply is lost -------------------------------------------------------


# Found in review (double charge: a sync that timed out but ran is charged again by the next one); fixed.
async def test_a_sync_that_timed_out_but_ran_is_not_charged_again(
    server: RedisServer, quick: RedisStore
) -> None:
    """(double charge): Redis stalls past the client's timeout, then runs
    the sync it had received; the worker, told StoreUnavailable, sends the same
    `used` again under a new seq and the payer pays those answers twice (or more:
    every sync retried during the stall carries them too)."""
    await quick.credit(TAB, 100 * PRICE, "top-up")
    worker = Leases(quick, idle=60)
    holds = [await worker.hold(TAB, PRICE) for _ in range(5)]
    for hold in holds:
        await worker.settle(hold, PRICE)
    with paused(server):  # before the next flush: that sync goes out into the stall
        await asyncio.sleep(0.5)  # past the 0.3 s timeout: the worker saw it fail
    await asyncio.sleep(0.3)  # Redis ran it; the worker syncs again
    await worker.close()
    assert await quick.balance(TAB) == 95 * PRICE  # five answers, paid once


# Found in review (overspend: a give-back that timed out but ran leaves a phantom slice); fixed.
async def test_a_give_back_that_timed_out_but_ran_is_not_spent_again(
    server: RedisServer, store: RedisStore, quick: RedisStore
) -> None:
    """(overspend, served unpaid): an idle slice's give-back reaches a
    stalled Redis and times out; the worker still believes it holds the slice
    and serves from it, while Redis, once back, returns it to the tab for
    another worker to spend too."""
    await store.credit(TAB, 100 * PRICE, "top-up")
    stalled = Leases(quick, flush=0.02, idle=0.1)
    assert await drain_n(stalled, 1) == 1  # leases a quarter: 25 requests' worth
    lease = stalled._leases[TAB]
    await until(lambda: lease.charged == lease.taken)  # the charge synced
    served = 1
    with paused(server):
        await until(lambda: lease.lock.locked())  # the idle give-back is on the wire
        await until(lambda: not lease.lock.locked())  # and failed: StoreUnavailable
        # Requests keep coming; the worker serves them from "its" slice in memory.
        served += await drain_n(stalled, 24)
    other = Leases(store)
    served += await drain(other)
    await asyncio.sleep(0.2)
    for leases in (stalled, other):
        await leases.close()
    assert served <= 100  # the tab paid for 100 answers
    assert await store.balance(TAB) == 100 * PRICE - served * PRICE


# --- close, and the sync task it cancels ------------------------------------------------


# Found in review (double charge: close() cancelled a sync already sent, then resent its charges); fixed.
async def test_closing_while_a_sync_is_on_the_wire_charges_once(
    server: RedisServer, store: RedisStore
) -> None:
    """(double charge): close() cancels the background sync after its
    batch went out (it still runs on Redis), then gives the slice back carrying
    the same `used` under a new seq: the payer pays those answers twice."""
    await store.credit(TAB, 100 * PRICE, "top-up")
    worker = Leases(store, idle=60)
    assert await drain_n(worker, 5) == 5
    lease = worker._leases[TAB]
    with paused(server):  # a slow round trip, made long enough to land in
        await until(lambda: lease.lock.locked())  # the sync of those 5 is out
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(worker.close())  # the worker stops meanwhile
        await asyncio.sleep(0.05)
    await closing
    assert await store.balance(TAB) == 95 * PRICE  # five answers, paid once
    assert await spendable(store, TAB) == 95 * PRICE  # and the slice came back


# --- a hold that waits while its lease is given back -----------------------------------


# Found in review (served unpaid + overspend: a hold lands on a lease dropped by its give-back); fixed.
async def test_a_hold_waiting_on_a_lease_being_given_back_is_synced(
    server: RedisServer, store: RedisStore
) -> None:
    """(served unpaid, then overspent): requests arriving during an idle
    slice's give-back wait on its lock; the give-back then drops the lease from
    the worker's table, and the waiting requests grow and spend that dropped
    lease, which nothing ever syncs: their charges are never taken, and the
    slice returns whole at its ttl for the tab to pay again."""
    await store.credit(TAB, 100 * PRICE, "top-up")
    worker = Leases(store, flush=0.02, idle=0.1, ttl=1)
    assert await drain_n(worker, 1) == 1
    lease = worker._leases[TAB]
    await until(lambda: lease.charged == lease.taken)
    with paused(server):  # the give-back's round trip, long enough to arrive in
        await until(lambda: lease.lock.locked())
        burst = asyncio.gather(*(worker.hold(TAB, PRICE) for _ in range(10)))
        await asyncio.sleep(0.05)
    holds: list[Hold] = await burst
    for hold in holds:
        await worker.settle(hold, PRICE)
    served = 1 + len(holds)
    await asyncio.sleep(0.3)  # several flushes: whatever is synced is synced
    assert await store.balance(TAB) == (100 - served) * PRICE  # every answer paid
    await worker.close()
    await asyncio.sleep(1.2)  # past the ttl of anything left behind
    other = Leases(store)
    served += await drain(other)
    await other.close()
    assert served == 100


# --- holds while a periodic sync is on the wire ---------------------------------------


async def test_holds_go_on_from_memory_while_a_periodic_sync_is_out(
    server: RedisServer, store: RedisStore
) -> None:
    """A busy worker's requests do not wait for Redis at every sync: up to
    SYNC_HOLDS are held from the slice while the sync is out, the store keeps
    them covered, and every one is charged once."""
    await store.credit(TAB, 10_000 * PRICE, "top-up")
    worker = Leases(store, flush=0.02, idle=5, ttl=30)
    assert await drain_n(worker, 3) == 3
    lease = worker._leases[TAB]
    holds: list[Hold] = []
    with paused(server):
        await until(lambda: lease.call is not None)  # the periodic sync, stalled
        while (hold := worker.take(TAB, PRICE)) is not None:
            holds.append(hold)
        assert len(holds) == SYNC_HOLDS  # its budget, no more
        assert lease.budget == 0
    for hold in holds:
        await worker.settle(hold, PRICE)
    await worker.close()
    assert await store.balance(TAB) == (10_000 - 3 - SYNC_HOLDS) * PRICE


async def test_a_recall_answered_by_a_sync_with_holds_out_keeps_the_tab_exact(
    server: RedisServer, store: RedisStore
) -> None:
    """Worker b is short and has recalled when worker a's periodic sync goes
    out, a holding from its budget meanwhile: the store keeps that budget out
    of what it gives back and does not count a as answered, b gets the rest
    at a's next sync, and the tab serves exactly what it pays for."""
    await store.credit(TAB, 1_200 * PRICE, "top-up")
    # a's periodic syncs are made by hand (its own loop would sleep an hour):
    # the one held up must be the first after b's recall, which a periodic
    # sync of its own in between would have answered already.
    a = Leases(store, flush=3600, idle=5, ttl=30, recall=5)
    b = Leases(store, flush=0.02, idle=5, ttl=30, recall=5)
    assert await drain_n(a, 1) == 1  # a leases a quarter: 300 requests' worth
    busy = await a.hold(TAB, PRICE)  # in flight: a's syncs keep the lease
    lease = a._leases[TAB]
    b_served = asyncio.ensure_future(drain(b))  # the other 900, then a recall
    recall = store.keys.lease(TAB)[4]
    for _ in range(500):
        if await store._client.hexists(recall, "at"):
            break
        await asyncio.sleep(0.01)
    assert await store._client.hexists(recall, "at")
    in_call: list[Hold] = []
    with paused(server):
        sync = asyncio.ensure_future(a._locked_sync(TAB, lease))  # periodic, held up
        await until(lambda: lease.call is not None)
        while len(in_call) < 100 and (hold := a.take(TAB, PRICE)) is not None:
            in_call.append(hold)
    await sync
    assert len(in_call) == 100
    for hold in (busy, *in_call):
        await a.settle(hold, PRICE)
    await a._locked_sync(TAB, lease)  # a's next sync: b gets the rest
    served_b = await b_served
    served_a = 2 + len(in_call) + await drain(a)
    for worker in (a, b):
        await worker.close()
    assert served_a + served_b == 1_200
    assert await store.balance(TAB) == 0


# --- a worker cut off from Redis for longer than its lease's ttl --------------------------


# Found in review (overspend: no local expiry, a cut-off worker spends a slice Redis gave back); fixed.
async def test_a_worker_cut_off_past_its_ttl_stops_spending_its_slice(
    server: RedisServer, store: RedisStore
) -> None:
    """A worker that cannot reach Redis keeps serving from its slice in memory for
    as long as the slice lasts; Redis gives that slice back to the tab when the
    ttl runs out, and other workers spend it again. What the tab cannot be made
    to pay must stay within the README's bound ("what it charged since that
    sync"): the requests the worker served before its first sync after the cut
    failed (a flush and the client's timeout), not what it served after that.
    Today it is everything the worker served until the slice ran out."""
    await store.credit(TAB, 100 * PRICE, "top-up")
    async with Relay(server.port) as relay:
        far = RedisStore.from_url(relay.url, prefix=store.keys.prefix, timeout=0.3)
        try:
            cut_off = Leases(far, ttl=1, idle=60)
            served = await drain_n(cut_off, 1)  # a slice: 25 requests' worth
            await asyncio.sleep(0.1)  # synced
            relay.cut()
            loop = asyncio.get_running_loop()
            cut_at = loop.time()
            early = 0  # served within a flush and a timeout of the cut
            while loop.time() < cut_at + 2.5:  # well past the ttl
                if await drain_n(cut_off, 1):
                    served += 1
                    early += loop.time() - cut_at <= 0.05 + 0.3
                await asyncio.sleep(0.05)
            other = Leases(store)
            served += await drain(other)  # the slice came back to the tab at its ttl
            await other.close()
            relay.heal()
            await cut_off.close()
        finally:
            await far.close()
    assert served - 100 <= early  # the tab paid for 100 answers


# Found in review (wrong refusal: money refunded into a slice that answered a recall); fixed.
async def test_money_freed_after_answering_a_recall_is_not_refused(store: RedisStore) -> None:
    """(wrong refusal): worker B answered a recall while its request was
    in flight; that request then fails upstream and is refunded (charge 0), so
    B's slice is free again, but B neither syncs (nothing used, nothing in
    flight) nor counts as pending (it answered): A's next request is refused
    at once while B holds the free money, for up to `idle` (0.5 s). Per request
    holds (Direct) serve it."""
    await store.credit(TAB, 2 * PRICE, "top-up")
    a, b = Leases(store), Leases(store)
    on_b = await b.hold(TAB, PRICE)  # B's slice: exactly this request's hold
    on_a = await a.hold(TAB, PRICE)
    with pytest.raises(Exhausted):
        await a.hold(TAB, PRICE)  # everything is held: refused (right), after a recall
    await b.settle(on_b, 0)  # B's upstream failed: nothing charged
    await asyncio.sleep(0.15)  # three flushes: every lease had its chance to sync
    again = await a.hold(TAB, PRICE)  # one request's worth is free on the tab
    for leases, hold in ((a, on_a), (a, again)):
        await leases.settle(hold, PRICE)
    for leases in (a, b):
        await leases.close()
    assert await store.balance(TAB) == 0


# --- what held under attack (regression tests) -------------------------------------------


# Held under attack.
async def test_a_sync_resent_after_its_reply_was_lost_charges_once(
    server: RedisServer, store: RedisStore
) -> None:
    """Held: the connection drops after Redis ran a sync; the client's retry sends
    the same batch again (same seq) and the script answers it without charging."""
    await store.credit(TAB, 100 * PRICE, "top-up")
    async with Relay(server.port) as relay:
        far = RedisStore.from_url(relay.url, prefix=store.keys.prefix)
        try:
            worker = Leases(far, idle=60)
            assert await drain_n(worker, 5) == 5
            lease = worker._leases[TAB]
            relay.drop_replies = 1  # before the next flush: the sync's reply is lost
            await until(lambda: lease.charged == lease.taken)  # synced, through the retry
            assert relay.drop_replies == 0
            await worker.close()
        finally:
            await far.close()
    assert await store.balance(TAB) == 95 * PRICE
    assert await spendable(store, TAB) == 95 * PRICE


# Held under attack.
async def test_closing_while_redis_stalls_past_the_timeout_still_returns_the_slice(
    server: RedisServer, store: RedisStore, quick: RedisStore
) -> None:
    """Held: close() gives up on a stalled Redis (StoreUnavailable, logged); the
    give-back it sent runs once Redis is back: the slice returns at once, with
    the charges taken once."""
    await store.credit(TAB, 100 * PRICE, "top-up")
    worker = Leases(quick, idle=60, flush=60)  # no background sync in the way
    assert await drain_n(worker, 3) == 3
    with paused(server):
        await worker.close()  # fails after 0.3 s, leaving the slice to its ttl
    await asyncio.sleep(0.1)
    assert await store.balance(TAB) == 97 * PRICE
    assert await spendable(store, TAB) == 97 * PRICE  # back now, not in 30 s


# Held under attack.
async def test_three_workers_serve_exactly_what_the_tab_pays_for_with_top_ups(
    store: RedisStore,
) -> None:
    """Held: recalls between three workers, holds arriving while syncs are in
    flight, and a top-up while slices are out: exactly min(N, K) each round."""

    async def burst(leases: Leases, n: int) -> int:
        return sum(await serve(leases, n, tab=TAB))

    await store.credit(TAB, 30 * PRICE, "first")
    workers = [Leases(store) for _ in range(3)]
    first = await asyncio.gather(*(burst(w, 100) for w in workers))
    assert sum(first) == 30
    await store.credit(TAB, 10 * PRICE, "second")  # slices may still be out
    second = await asyncio.gather(*(burst(w, 20) for w in workers))
    assert sum(second) == 10
    for worker in workers:
        await worker.close()
    assert await store.balance(TAB) == 0
    assert await spendable(store, TAB) == 0


# Held under attack.
async def test_charges_below_the_hold_are_taken_exactly_across_workers(
    server: RedisServer, store: RedisStore
) -> None:
    """Held: charges smaller than holds (zero included), three workers, and Redis
    paused for less than the client's timeout in the middle: the tab loses
    exactly what was charged, never more than it holds."""
    await store.credit(TAB, 50 * PRICE, "top-up")
    charged = 0

    async def one(leases: Leases) -> None:
        nonlocal charged
        try:
            hold = await leases.hold(TAB, PRICE)
        except Exhausted:
            return
        await asyncio.sleep(random.random() / 50)
        charge = random.choice((0, 1, PRICE // 3, PRICE - 1, PRICE))
        charged += charge
        await leases.settle(hold, charge)

    workers = [Leases(store) for _ in range(3)]
    running_requests = asyncio.gather(*(one(workers[i % 3]) for i in range(400)))
    await asyncio.sleep(0.01)
    with paused(server):
        await asyncio.sleep(0.2)
    await running_requests
    for worker in workers:
        await worker.close()
    assert charged <= 50 * PRICE
    assert await store.balance(TAB) == 50 * PRICE - charged
    assert await spendable(store, TAB) == 50 * PRICE - charged


# Held under attack.
async def test_amounts_near_2_to_the_53_stay_exact(store: RedisStore) -> None:
    """Held: a tab of 2**53 - 1 msat, holds of 2**51: three served, to the msat."""
    worth, price = 2**53 - 1, 2**51
    await store.credit(TAB, worth, "top-up")  # 3 holds and 2**51 - 1 msat
    a, b = Leases(store), Leases(store)

    async def one(leases: Leases) -> bool:
        try:
            hold = await leases.hold(TAB, price)
        except Exhausted:
            return False
        await leases.settle(hold, price)
        return True

    served = await asyncio.gather(*(one((a, b)[i % 2]) for i in range(8)))
    assert sum(served) == 3
    for leases in (a, b):
        await leases.close()
    assert await store.balance(TAB) == worth - 3 * price


# Held under attack.
async def test_zero_holds_and_charges_above_the_hold(store: RedisStore) -> None:
    """Held: a zero hold charges nothing; a charge above its hold takes the hold only."""
    await store.credit(TAB, 10 * PRICE, "top-up")
    worker = Leases(store)
    free = await worker.hold(TAB, 0)
    await worker.settle(free, PRICE)
    over = await worker.hold(TAB, PRICE)
    await worker.settle(over, 5 * PRICE)
    await worker.close()
    assert await store.balance(TAB) == 9 * PRICE


# Held under attack.
async def test_the_sync_task_stops_when_idle_and_restarts_on_demand(store: RedisStore) -> None:
    """Held: once every slice went back the worker has no task and holds nothing;
    the next request starts it again; close() leaves nothing behind."""
    await store.credit(TAB, 10 * PRICE, "top-up")
    worker = Leases(store, flush=0.01, idle=0.05)
    assert await drain_n(worker, 2) == 2
    await until(lambda: worker._task is None)
    assert worker._leases == {}
    assert await spendable(store, TAB) == 8 * PRICE  # nothing leased any more
    assert await drain_n(worker, 1) == 1
    assert worker._task is not None
    await worker.close()
    assert worker._task is None and worker._leases == {}
    assert await spendable(store, TAB) == await store.balance(TAB) == 7 * PRICE


# Found in review (overspend: a worker waking past its ttl serves from the expired slice); fixed.
async def test_a_worker_waking_from_a_stall_past_its_ttl_does_not_spend_the_old_slice(
    store: RedisStore,
) -> None:
    """(served unpaid, overspend): a worker process stalls (swap, a VM
    pause, a long GC) past its lease's ttl; Redis gives the slice back. On waking,
    the requests queued meanwhile are served from the slice the worker still
    believes it has, before any sync tells it otherwise: their charges are
    never taken, and the tab pays for that money twice."""
    await store.credit(TAB, 100 * PRICE, "top-up")
    stalled = Leases(store, ttl=1, idle=60)
    assert await drain_n(stalled, 1) == 1
    await asyncio.sleep(0.1)  # synced: its charge is taken
    time.sleep(1.2)  # the whole worker freezes, past the ttl
    served = 1 + await drain_n(stalled, 10)  # what arrived meanwhile, served at once
    await asyncio.sleep(0.1)
    other = Leases(store)
    served += await drain(other)
    for leases in (stalled, other):
        await leases.close()
    assert served <= 100
    assert await store.balance(TAB) == (100 - served) * PRICE


# Held under attack.
async def test_every_worker_shows_the_payer_s_balance_once_synced(store: RedisStore) -> None:
    """Held: after a busy round on three workers (charges below the holds), each
    worker's `balance` and the store's agree with what was paid in less what was
    charged, once every lease synced (within a few flushes)."""
    await store.credit(TAB, 40 * PRICE, "top-up")
    workers = [Leases(store, idle=60) for _ in range(3)]
    charged = 0

    async def one(leases: Leases) -> None:
        nonlocal charged
        try:
            hold = await leases.hold(TAB, PRICE)
        except Exhausted:
            return
        await asyncio.sleep(random.random() / 100)
        charge = random.randrange(PRICE + 1)
        charged += charge
        await leases.settle(hold, charge)

    await asyncio.gather(*(one(workers[i % 3]) for i in range(90)))
    await asyncio.sleep(0.2)
    for worker in workers:
        assert await worker.balance(TAB) == 40 * PRICE - charged
    assert await store.balance(TAB) == 40 * PRICE - charged
    for worker in workers:
        await worker.close()
    assert await spendable(store, TAB) == 40 * PRICE - charged


# Held under attack.
async def test_three_workers_on_a_cluster_serve_exactly_the_tab(tmp_path: Path) -> None:
    """Held: the recall, the seqs and the sweep in one slot of a Redis Cluster:
    three workers, 90 requests against 20, exactly 20 served and paid."""
    need_redis()
    cluster = Cluster(tmp_path / "cluster")
    with running(cluster):
        store = RedisStore.from_url(cluster.url)
        try:
            await store.credit(TAB, 20 * PRICE, "top-up")
            workers = [Leases(store) for _ in range(3)]

            async def one(leases: Leases) -> bool:
                try:
                    hold = await leases.hold(TAB, PRICE)
                except Exhausted:
                    return False
                await asyncio.sleep(random.random() / 50)
                await leases.settle(hold, PRICE)
                return True

            served = await asyncio.gather(*(one(workers[i % 3]) for i in range(90)))
            assert sum(served) == 20
            for worker in workers:
                await worker.close()
            assert await store.balance(TAB) == 0
        finally:
            await store.close()

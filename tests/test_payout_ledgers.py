"""The payout ledger's contract, the same for SQLite (a list, or a one-machine
gateway) and Redis (server, cluster): reservations within budgets, once per
id, concurrent reservations never over budget, batches and their statuses."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.payouts.ledgerfile import LedgerConflict, open_ledger
from gateway.payouts.ledgerredis import RedisLedger
from gateway.payouts.records import MAX_ATTEMPTS, Batch, Payout
from gateway.policy.schema import Budget
from gateway.store.redis import RedisStore
from tests.redis_servers import Cluster, RedisServer, need_redis, running

DAY = "2026-12-01"
SCRIPT = "76a914" + "11" * 20 + "88ac"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis()
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    with running(redis):
        yield redis


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    need_redis()
    redis = Cluster(tmp_path_factory.mktemp("cluster"))
    with running(redis):
        yield redis


@pytest.fixture(params=["sqlite", "redis", "cluster"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    if request.param == "sqlite":
        found = open_ledger(tmp_path / "payouts.db", exclusive=False)
        yield found
        await found.close()
        return
    redis = request.getfixturevalue("server" if request.param == "redis" else "cluster")
    store = RedisStore.from_url(redis.url, prefix=f"t{secrets.token_hex(4)}:")
    yield await RedisLedger.open(store)
    await store.close()


def payout(pid: str, satoshis: int = 100, campaign: str = "vote") -> Payout:
    return Payout(pid, campaign, "02" + "22" * 32, SCRIPT, satoshis, ticket="t-" + pid)


async def test_a_reservation_is_once_per_id_and_within_budget(ledger) -> None:
    budget = Budget(total=250, per_day=200)
    outcome, first = await ledger.reserve(payout("a"), budget, DAY)
    assert outcome == "new" and first.status == "reserved" and first.ticket == "t-a"
    outcome, again = await ledger.reserve(payout("a", 999), budget, DAY)
    assert outcome == "again" and again.satoshis == 100  # the first record stands
    assert (await ledger.reserve(payout("b"), budget, DAY))[0] == "new"
    assert await ledger.reserve(payout("c"), budget, DAY) == ("exhausted", None)  # the day's 200
    assert (await ledger.reserve(payout("c", 50), budget, "2026-12-02"))[0] == "new"
    assert await ledger.reserve(payout("d", 1), budget, "2026-12-03") == ("exhausted", None)
    assert await ledger.spent("vote", DAY) == (250, 200)


async def test_owe_then_unreserve_gives_the_budget_back_only_while_reserved(ledger) -> None:
    budget = Budget(total=100)
    await ledger.reserve(payout("a"), budget, DAY)
    assert await ledger.unreserve("a") is True
    assert await ledger.get("a") is None and await ledger.spent("vote", DAY) == (0, 0)
    await ledger.reserve(payout("b"), budget, DAY)
    owed = await ledger.owe("b")
    assert owed is not None and owed.status == "owed"
    assert await ledger.unreserve("b") is False  # owed: never given back
    assert [p.id for p in await ledger.owed(10)] == ["b"]


async def test_concurrent_reservations_never_pass_the_budget(ledger) -> None:
    budget = Budget(total=1000, per_day=700)
    results = await asyncio.gather(
        *(ledger.reserve(payout(f"p{i}", 30), budget, DAY) for i in range(60))
    )
    new = [r for r in results if r[0] == "new"]
    assert len(new) == 23  # 23 * 30 = 690 <= 700 < 720
    assert await ledger.spent("vote", DAY) == (690, 690)


async def test_a_batch_moves_its_payouts_and_a_refusal_owes_them_again(ledger) -> None:
    await ledger.add([payout("a"), payout("b"), payout("c")])
    owed = await ledger.owed(2)
    assert [p.id for p in owed] == ["a", "b"]
    batch = Batch("aa" * 32, ("a", "b"), b"\x01\x02", (("bb" * 32, 0),), 1, 200, created=1.0)
    await ledger.open_batch(batch)
    with pytest.raises(LedgerConflict):  # a is not owed any more: nothing changes
        await ledger.open_batch(Batch("cc" * 32, ("c", "a"), b"", (), 1, 200))
    assert (await ledger.get("c")).status == "owed"
    a = await ledger.get("a")
    assert (a.status, a.txid, a.vout) == ("signed", "aa" * 32, 0)
    assert (await ledger.get("b")).vout == 1
    stored = await ledger.batch("aa" * 32)
    assert stored.payouts == ("a", "b") and stored.beef == b"\x01\x02"
    assert stored.inputs == (("bb" * 32, 0),)
    await ledger.advance("aa" * 32, "seen")
    await ledger.advance("aa" * 32, "sent")  # never backwards
    assert {p.status for p in await ledger.payouts(status="seen")} == {"seen"}
    await ledger.refuse("aa" * 32, "double-spend")
    a = await ledger.get("a")
    assert (a.status, a.attempts, a.retry_of, a.txid) == ("owed", 1, "aa" * 32, None)
    assert [b.txid for b in await ledger.batches(("failed",))] == ["aa" * 32]
    tally = await ledger.tally()
    assert tally.counts == {"owed": 3} and tally.satoshis == {"owed": 300}


async def test_refused_max_attempts_times_a_payout_fails_until_retried(ledger) -> None:
    await ledger.add([payout("a")])
    for attempt in range(MAX_ATTEMPTS):
        txid = f"{attempt:02x}" * 32
        await ledger.open_batch(Batch(txid, ("a",), b"", (), 1, 100))
        await ledger.refuse(txid, "rejected")
    assert (await ledger.get("a")).status == "failed"
    assert await ledger.owed(5) == []
    assert await ledger.retry_failed() == 1
    assert [p.id for p in await ledger.owed(5)] == ["a"]


async def test_a_lease_has_one_holder_at_a_time(ledger) -> None:
    assert await ledger.lease("engine", "w1", 0.3)
    assert not await ledger.lease("engine", "w2", 0.3)
    assert await ledger.lease("engine", "w1", 0.3)  # renewed by its holder
    await asyncio.sleep(0.45)
    assert await ledger.lease("engine", "w2", 0.3)


async def test_odd_ids_are_kept_exactly(ledger) -> None:
    odd = ["a,b", "{x}", "ünï", "sp ace", 'q"uote', "x" * 200]
    await ledger.add([payout(i) for i in odd])
    assert [p.id for p in await ledger.payouts()] == odd
    await ledger.open_batch(Batch("dd" * 32, tuple(odd), b"", (), 1, 600))
    assert (await ledger.batch("dd" * 32)).payouts == tuple(odd)
    await ledger.advance("dd" * 32, "mined", block_height=7)
    assert {p.status for p in await ledger.payouts()} == {"mined"}
    assert (await ledger.batch("dd" * 32)).block_height == 7


async def test_a_refused_batch_on_chain_after_all_is_revived_and_others_cancelled(ledger) -> None:
    await ledger.add([payout("a"), payout("b"), payout("c")])
    first = Batch("a1" * 32, ("a", "b"), b"", (("ee" * 32, 0),), 1, 200)
    await ledger.open_batch(first)
    for _ in range(MAX_ATTEMPTS):
        await ledger.refuse(first.txid, "double-spend")
        found = await ledger.get("a")
        if found.status != "owed":
            break
        txid = f"{found.attempts:02x}" * 32
        await ledger.open_batch(Batch(txid, ("a", "b"), b"", (("ee" * 32, 0),), 1, 200))
        first = Batch(txid, ("a", "b"), b"", (), 1, 200)
    assert {(await ledger.get(i)).status for i in "ab"} == {"failed"}
    # The first refused batch is on chain after all: a and b paid by it, at their outputs.
    assert await ledger.revive("a1" * 32, "seen") == 2
    a, b = await ledger.get("a"), await ledger.get("b")
    assert (a.status, a.txid, a.vout, b.vout) == ("seen", "a1" * 32, 0, 1)
    assert (await ledger.batch("a1" * 32)).status == "seen"
    assert await ledger.revive("a1" * 32, "seen") == 0  # once
    # c refused for good, checked by an admin: cancelled (a is paid: untouched).
    await ledger.open_batch(Batch("c1" * 32, ("c",), b"", (), 1, 100))
    await ledger.refuse("c1" * 32, "rejected", retry=False)
    assert await ledger.cancel(["c", "a"], "checked") == 1
    c = await ledger.get("c")
    assert (c.status, c.reason) == ("cancelled", "checked")
    assert (await ledger.get("a")).status == "seen"
    assert await ledger.owed(10) == []
    assert (await ledger.batch("c1" * 32)).payouts == ("c",)  # members kept after refusal

"""Adversarial review of three changes: budgeted lease syncs (f85268e), a
revoked grant's token passed over for the next (9b001e5), and closed
connections freed by refcounting (1871487).

Every test asserts what a payer, a client or nginx would see: what the tab
paid against what was served, the answer and the grant the upstream got,
what nginx may keep.
"""

# ruff: noqa: F811  (fixtures are imported, and requested by name)

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.payments.cashier import Cashier
from gateway.pipeline.credentials import Revocations
from gateway.store.leases import SYNC_HOLDS, Exhausted, Hold, Leases
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.tokens import Grant, KeyRing, Tokens
from tests.chainkit import Tracker
from tests.conftest import PAID_POLICY, PAID_SERVER
from tests.redis_servers import RedisServer
from tests.test_auth_request import ask
from tests.test_express import Lanes, Raw, exchange, lanes  # noqa: F401
from tests.test_express_adversary import (  # noqa: F401
    both,
    grant_of,
    mint,
    raw,
    status,
    two_tokens,
    upstream_grant,
)
from tests.test_paid_access import FakeBroadcaster
from tests.test_tab_leases import spendable
from tests.test_tab_leases_adversary import (  # noqa: F401
    PRICE,
    TAB,
    Relay,
    drain,
    drain_n,
    paused,
    prefix,
    quick,
    server,
    store,
    until,
)

# --- f85268e: holds from a periodic sync's budget --------------------------------------


# Held under attack.
async def test_bigger_holds_during_a_budgeted_sync_stay_within_the_kept_budget(
    server: RedisServer, store: RedisStore
) -> None:
    """The budget is counted in the last hold's size, but held in msat: holds
    a hundred times that size while the sync is out take no more than the
    store kept, and every one is charged once."""
    await store.credit(TAB, 10_000 * PRICE, "top-up")
    worker = Leases(store, flush=0.02, idle=5, ttl=30)
    assert await drain_n(worker, 3) == 3  # the last hold: PRICE
    lease = worker._leases[TAB]
    big = 100 * PRICE
    holds: list[Hold] = []
    with paused(server):
        await until(lambda: lease.call is not None)
        while (hold := worker.take(TAB, big)) is not None:
            holds.append(hold)
        while (hold := worker.take(TAB, PRICE)) is not None:
            holds.append(hold)
        held = sum(h.amount for h in holds)
        assert held <= SYNC_HOLDS * PRICE
        assert len([h for h in holds if h.amount == big]) == SYNC_HOLDS // 100
    for hold in holds:
        await worker.settle(hold, hold.amount)
    await worker.close()
    assert await store.balance(TAB) == 10_000 * PRICE - 3 * PRICE - held
    assert await spendable(store, TAB) == 10_000 * PRICE - 3 * PRICE - held


# Held under attack.
async def test_closing_during_a_budgeted_sync_charges_its_holds_once(
    server: RedisServer, store: RedisStore
) -> None:
    """close() cancels a periodic sync that is out with holds taken from its
    budget (and settled): the give-back carries their charges, the cancelled
    sync runs later and is not applied again, and the slice comes back."""
    await store.credit(TAB, 1_000 * PRICE, "top-up")
    worker = Leases(store, flush=0.02, idle=5, ttl=30)
    assert await drain_n(worker, 3) == 3
    lease = worker._leases[TAB]
    with paused(server):
        await until(lambda: lease.call is not None)
        holds = [worker.take(TAB, PRICE) for _ in range(50)]
        assert all(h is not None for h in holds)
        for hold in holds:
            assert hold is not None
            await worker.settle(hold, PRICE)
        closing = asyncio.ensure_future(worker.close())
        await asyncio.sleep(0.05)
    await closing
    await asyncio.sleep(0.05)
    assert await store.balance(TAB) == (1_000 - 53) * PRICE
    assert await spendable(store, TAB) == (1_000 - 53) * PRICE


# Held under attack.
async def test_a_budgeted_sync_that_timed_out_does_not_overspend_or_stall_a_recall(
    server: RedisServer, store: RedisStore, quick: RedisStore
) -> None:
    """Worker a (a client that gives up after 0.3 s) holds from its budget
    while its periodic sync is stalled past the timeout; worker b then runs
    the tab dry and recalls. The tab serves exactly what it paid for: b gets
    every msat a does not use, within b's recall."""
    await store.credit(TAB, 400 * PRICE, "top-up")
    a = Leases(quick, flush=0.02, idle=5, ttl=30)
    b = Leases(store, flush=0.02, idle=5, ttl=30)
    served_a = await drain_n(a, 1)  # a's slice: a quarter
    busy = await a.hold(TAB, PRICE)  # keeps a syncing
    lease = a._leases[TAB]
    in_call: list[Hold] = []
    with paused(server):
        await until(lambda: lease.call is not None)
        while len(in_call) < 40 and (hold := a.take(TAB, PRICE)) is not None:
            in_call.append(hold)
        await asyncio.sleep(0.4)  # past a's timeout: a is uncertain
        assert a.take(TAB, PRICE) is None
    for hold in (busy, *in_call):
        await a.settle(hold, PRICE)
    served_a += 1 + len(in_call)
    served_b = await drain(b)
    served_a += await drain(a)
    served_b += await drain(b)
    for worker in (a, b):
        await worker.close()
    assert served_a + served_b == 400
    assert await store.balance(TAB) == 0


# Held under attack.
async def test_a_budgeted_sync_resent_after_its_reply_was_lost_charges_once(
    server: RedisServer, store: RedisStore
) -> None:
    """A periodic sync's reply is lost (the client resends it, same seq)
    while holds are taken from its budget: every answer is charged once and
    the slice comes back whole."""
    await store.credit(TAB, 1_000 * PRICE, "top-up")
    async with Relay(server.port) as relay:
        far = RedisStore.from_url(relay.url, prefix=store.keys.prefix)
        try:
            worker = Leases(far, flush=0.02, idle=60)
            assert await drain_n(worker, 5) == 5
            lease = worker._leases[TAB]
            relay.drop_replies = 1
            await until(lambda: lease.call is not None)
            holds = [worker.take(TAB, PRICE) for _ in range(20)]
            for hold in holds:
                assert hold is not None
                await worker.settle(hold, PRICE)
            await until(lambda: relay.drop_replies == 0)
            await until(lambda: lease.call is None and lease.charged == lease.taken)
            await worker.close()
        finally:
            await far.close()
    assert await store.balance(TAB) == (1_000 - 25) * PRICE
    assert await spendable(store, TAB) == (1_000 - 25) * PRICE


# Held under attack.
async def test_three_workers_with_budgeted_syncs_serve_exactly_the_tab(
    store: RedisStore,
) -> None:
    """Three busy workers, each holding from budgets while its syncs are out,
    with recalls between them: exactly what the tab paid for, none refused
    while money is free."""
    await store.credit(TAB, 600 * PRICE, "top-up")
    workers = [Leases(store, flush=0.01, idle=5, ttl=30) for _ in range(3)]

    async def busy(leases: Leases) -> int:
        served = 0
        while True:
            try:
                hold = await leases.hold(TAB, PRICE)
            except Exhausted:
                return served
            await asyncio.sleep(0.0005)
            await leases.settle(hold, PRICE)
            served += 1

    async def many(leases: Leases) -> int:
        return sum(await asyncio.gather(*(busy(leases) for _ in range(8))))

    served = sum(await asyncio.gather(*(many(w) for w in workers)))
    for worker in workers:
        await worker.close()
    assert served == 600
    assert await store.balance(TAB) == 0


# --- 9b001e5: a revoked grant's token passed over --------------------------------------


async def revoked_token(lanes: Lanes, *, seen: bool = True, tab: str | None = None) -> str:
    grant_id = uuid.uuid4().hex
    token = mint(lanes, seen=seen, grant_id=grant_id, tab=tab)
    await lanes.store.revoke(tab or grant_id, int(time.time()) + 600)
    return token


# Held under attack.
async def test_revoked_beside_not_yet_valid_is_decided_alike(
    lanes: Lanes, raw: Raw, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revoked grant's token and one not valid yet, in either order: the
    same refusal on both paths, nothing sent upstream."""
    now = time.time()
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: now + 3600)
        early = mint(lanes, seen=False)
    lanes.tokens.verify(early)
    revoked = await revoked_token(lanes)
    for first, second in ((early, revoked), (revoked, early)):
        fast, slow, heads_fast, heads_slow = await both(lanes, raw, two_tokens(first, second))
        assert status(fast) == status(slow) == b"402", (fast[:300], slow[:300])
        assert (b"grant-revoked" in fast) == (b"grant-revoked" in slow)
        assert heads_fast == heads_slow == []


# Held under attack.
async def test_a_fresh_valid_token_after_a_revoked_one_sends_the_same_grant_upstream(
    lanes: Lanes, raw: Raw
) -> None:
    """Revoked (seen) in Authorization, a fresh valid one in the cookie, a
    seen valid one after it: express cannot decide past the fresh token; both
    paths send the fresh token's grant upstream, not the seen one's."""
    for port in (lanes.express, lanes.slow):
        revoked = await revoked_token(lanes)
        fresh, seen = mint(lanes, seen=False), lanes.token()
        data = (
            b"GET /r/plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
            b"Authorization: Bearer %b\r\nCookie: farebox_token=%b; farebox_token=%b\r\n\r\n"
            % (revoked.encode(), fresh.encode(), seen.encode())
        )
        raw.heads.clear()
        got = await exchange(port, data)
        assert status(got) == b"200", (port, got[:300])
        assert len(raw.heads) == 1
        verified = lanes.tokens.verify(fresh)
        assert verified is not None
        assert upstream_grant(raw.heads[0]) == verified[1].encode(), port


# Held under attack.
async def test_every_tab_token_revoked_charges_no_tab(lanes: Lanes, raw: Raw) -> None:
    for port in (lanes.express, lanes.slow):
        tab_a, tab_b = uuid.uuid4().hex, uuid.uuid4().hex
        for tab in (tab_a, tab_b):
            await lanes.store.credit(tab, 1_000_000, once=tab)
        first = await revoked_token(lanes, tab=tab_a)
        second = await revoked_token(lanes, tab=tab_b)
        got = await exchange(port, two_tokens(first, second, b"/m/plain"))
        assert status(got) == b"402" and b"grant-revoked" in got, (port, got[:300])
        await asyncio.sleep(0.05)
        assert await lanes.store.balance(tab_a) == 1_000_000
        assert await lanes.store.balance(tab_b) == 1_000_000


# Held under attack.
async def test_a_fresh_tab_token_before_a_revoked_and_a_valid_one_is_the_tab_charged(
    lanes: Lanes, raw: Raw
) -> None:
    """A tab token not seen before, then a revoked tab's, then a valid tab's
    (seen): express cannot decide past the first, and both paths charge the
    first tab only."""
    drawn = {}
    for port in (lanes.express, lanes.slow):
        tabs = [uuid.uuid4().hex for _ in range(3)]
        for tab in tabs:
            await lanes.store.credit(tab, 1_000_000, once=tab)
        fresh = mint(lanes, tab=tabs[0], seen=False)
        revoked = await revoked_token(lanes, tab=tabs[1])
        valid = mint(lanes, tab=tabs[2])
        data = (
            b"GET /m/plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
            b"Authorization: Bearer %b\r\nCookie: farebox_token=%b; farebox_token=%b\r\n\r\n"
            % (fresh.encode(), revoked.encode(), valid.encode())
        )
        got = await exchange(port, data)
        assert status(got) == b"200", (port, got[:300])
        await asyncio.sleep(0.05)
        drawn[port] = [1_000_000 - (await lanes.store.balance(tab) or 0) for tab in tabs]
    assert drawn[lanes.slow] == [10_000, 0, 0]
    assert drawn[lanes.express] == drawn[lanes.slow]


# --- 9b001e5: nginx auth_request's cache -----------------------------------------------


def archive_token(tokens: Tokens, path: str, lasts: int, grant_id: str | None = None) -> str:
    return tokens.mint(
        Grant(
            id=grant_id or uuid.uuid4().hex,
            service="archive",
            scope=path,
            covers="resource",
            methods=("GET", "HEAD"),
            expires=int(time.time()) + lasts,
            txid="00" * 32,
            satoshis=25,
            payer="ab" * 16,
        )
    )


@pytest.fixture
async def paid(gateway, upstream, tmp_path: Path):  # type: ignore[no-untyped-def]
    store = MemoryStore()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    cashier = Cashier(
        PAID_SERVER, tracker=Tracker(), broadcaster=FakeBroadcaster(), store=store, tokens=tokens
    )
    base = await gateway(
        PAID_POLICY.format(upstream=upstream.url),
        server_key=PAID_SERVER.public_key().hex(),
        tokens=tokens,
        cashier=cashier,
        store=store,
        revocations=Revocations(store),
    )
    return SimpleNamespace(base=base, tokens=tokens, store=store)


# Held under attack.
async def test_nginx_keeps_a_yes_no_longer_than_the_grant_that_opened_it(paid) -> None:  # type: ignore[no-untyped-def]
    """A revoked long-lived grant's token beside a valid one about to expire:
    the 204 is the short one's, so nginx may not keep it (it would outlive
    that grant), whatever the revoked token's expiry says."""
    path = "/archive/pages/4"
    revoked_id = uuid.uuid4().hex
    revoked = archive_token(paid.tokens, path, 3600, revoked_id)
    await paid.store.revoke(revoked_id, int(time.time()) + 3600)
    short = archive_token(paid.tokens, path, 2)
    headers = {"Authorization": f"Bearer {revoked}", "Cookie": f"farebox_token={short}"}
    status_, answer = await ask(paid.base, path, headers)
    assert status_ == 204
    assert "X-Accel-Expires" not in answer
    # The other way round: a long valid one after a revoked short one is kept.
    revoked_short_id = uuid.uuid4().hex
    revoked_short = archive_token(paid.tokens, path, 2, revoked_short_id)
    await paid.store.revoke(revoked_short_id, int(time.time()) + 3600)
    long = archive_token(paid.tokens, path, 3600)
    headers = {"Authorization": f"Bearer {revoked_short}", "Cookie": f"farebox_token={long}"}
    status_, answer = await ask(paid.base, path, headers)
    assert status_ == 204 and answer.get("X-Accel-Expires") == "1"


# --- 1871487: an upstream connection lost mid-answer -----------------------------------

MB = 1 << 20


async def _scripted(answers: list[tuple[bytes, bool]]) -> asyncio.Server:
    """An upstream answering the n-th request on a connection with answers[n]
    (bytes, whether to close after them)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for data, close in answers:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(data)
                await writer.drain()
                if close:
                    break
            else:
                await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _lost_mid_answer(loop_errors: list[dict[str, object]]) -> dict[str, object]:
    from gateway.proxy.upstream import Client, Origin, UpstreamError

    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
    seen: dict[str, object] = {}
    body = b"x" * MB
    cases = {
        # More than the high water, then the connection dies short of the length.
        "short": [(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (4 * MB, body), True)],
        # No length: the body ends with the connection.
        "until-close": [(b"HTTP/1.1 200 OK\r\n\r\n" + body, True)],
        # A HEAD answer, then the upstream closes the idle connection.
        "head": [(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (4 * MB), True)],
    }
    client = Client(4)
    try:
        for name, answers in cases.items():
            server = await _scripted(answers)
            port = server.sockets[0].getsockname()[1]
            origin = Origin("127.0.0.1", port, f"127.0.0.1:{port}")
            method = "HEAD" if name == "head" else "GET"
            reply = await client.request(
                origin, method, "/", {}, connect_timeout=1, read_timeout=0.2, whole_limit=1024
            )
            await asyncio.sleep(0.3)  # paused at the high water, lost, past the read timeout
            got, error = 0, None
            if reply.body is None:
                try:
                    async for chunk in reply.chunks():
                        got += len(chunk)
                except (UpstreamError, TimeoutError) as exc:
                    error = type(exc).__name__
                reply.release()
                reply.release()
            seen[name] = (reply.status, got, error)
            server.close()
            await asyncio.sleep(0.2)  # timers that were armed have had their time
    finally:
        await client.close()
    return seen


@pytest.mark.parametrize("which", ["asyncio", "uvloop"])
def test_an_upstream_lost_mid_answer_is_read_out_on_either_loop(which: str) -> None:
    """Streamed answers read after the upstream died (paused at the high
    water, then resumed with no transport), a HEAD answer's connection
    closed while idle, the read timer's time passing after the loss: the
    reader gets what came and then an error or the end, release() may be
    called twice, and nothing else is raised on the loop."""
    import uvloop

    errors: list[dict[str, object]] = []
    runner = uvloop.run if which == "uvloop" else asyncio.run
    seen = runner(_lost_mid_answer(errors))
    assert seen["short"] == (200, MB, "UpstreamError")
    assert seen["until-close"] == (200, MB, None)
    assert seen["head"] == (200, 0, None)
    assert errors == []

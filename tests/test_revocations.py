"""The revocation cache (pipeline/credentials.py Revocations): one store call
per grant at a time, refreshed ahead while in use, never served past its ttl,
failing closed when the store is down."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.pipeline.credentials import Revocations
from gateway.store import StoreUnavailable


class Store:
    """A revocation list that counts its calls; each takes `delay` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0
        self.revoked_ids: set[str] = set()
        self.down = False

    async def revoked(self, grant_id: str) -> bool:
        self.calls += 1
        answer = grant_id in self.revoked_ids  # as the store holds it when asked
        await asyncio.sleep(self.delay)
        if self.down:
            raise StoreUnavailable("down")
        return answer


async def test_callers_that_find_the_answer_due_share_one_call() -> None:
    store = Store(delay=0.05)
    cache = Revocations(store, ttl=1.0)
    answers = await asyncio.gather(*(cache.revoked("g") for _ in range(200)))
    assert answers == [False] * 200
    assert store.calls == 1


async def test_a_grant_in_use_is_refreshed_ahead_and_never_waits() -> None:
    store = Store(delay=0.05)
    cache = Revocations(store, ttl=0.4)
    assert await cache.revoked("g") is False  # the first call waits for the store
    await asyncio.sleep(0.4 * (1 - Revocations.REFRESH_AHEAD) + 0.02)  # into the last quarter
    started = time.monotonic()
    assert await cache.revoked("g") is False
    assert time.monotonic() - started < 0.02, "served from memory while asked again"
    await asyncio.sleep(0.06)
    assert store.calls == 2  # one refresh, for every caller
    for _ in range(20):  # in steady use: no caller waits on the store
        began = time.monotonic()
        await cache.revoked("g")
        assert time.monotonic() - began < 0.02
        await asyncio.sleep(0.03)


async def test_a_revocation_is_in_force_within_the_ttl_however_it_is_asked() -> None:
    store = Store(delay=0.01)
    ttl = 0.2
    cache = Revocations(store, ttl=ttl)
    seen: list[tuple[float, bool]] = []
    flipped = 0.0

    async def caller() -> None:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            seen.append((time.monotonic(), await cache.revoked("g")))
            await asyncio.sleep(0.003)

    async def revoke() -> None:
        nonlocal flipped
        await asyncio.sleep(0.33)
        store.revoked_ids.add("g")
        flipped = time.monotonic()

    await asyncio.gather(*(caller() for _ in range(5)), revoke())
    late = [answer for at, answer in seen if at >= flipped + ttl]
    assert late and all(late), "served 'not revoked' past the ttl"
    assert any(not answer for at, answer in seen if at < flipped)


async def test_a_store_down_fails_closed_once_the_answer_is_due() -> None:
    store = Store(delay=0.01)
    cache = Revocations(store, ttl=0.2)
    assert await cache.revoked("g") is False
    store.down = True
    await asyncio.sleep(0.2 * (1 - Revocations.REFRESH_AHEAD) + 0.02)
    # The refresh ahead fails in the background; the answer still within its ttl stands.
    assert await cache.revoked("g") is False
    await asyncio.sleep(0.2)
    with pytest.raises(StoreUnavailable):
        await cache.revoked("g")
    results = await asyncio.gather(*(cache.revoked("g") for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    store.down = False
    assert await cache.revoked("g") is False


async def test_a_caller_cancelled_while_waiting_leaves_the_others_their_answer() -> None:
    store = Store(delay=0.1)
    cache = Revocations(store, ttl=1.0)
    store.revoked_ids.add("g")
    first = asyncio.ensure_future(cache.revoked("g"))
    second = asyncio.ensure_future(cache.revoked("g"))
    await asyncio.sleep(0.02)
    first.cancel()
    assert await second is True
    assert store.calls == 1
    assert await cache.revoked("g") is True and store.calls == 1

"""Chain trackers: Block Headers Service, our devnet, and a cache in front of either.

Block Headers Service (github.com/bitcoin-sv/block-headers-service), under
`{url}/api/v1`, auth `Authorization: Bearer <token>`:
- POST /chain/merkleroot/verify, body `[{"merkleRoot": ..., "blockHeight": ...}]`,
  answers `{"confirmationState": "CONFIRMED" | "INVALID" | "UNABLE_TO_VERIFY",
  "confirmations": [...]}` (its swagger says an array of those; the handler
  and its own regression test use one object: both are read);
- GET /chain/tip/longest answers `{"height": N, "header": {...}, ...}`.
UNABLE_TO_VERIFY means the service has not synced that far yet: "not valid as
far as we know", so False, and the cache forgets it after `negative_ttl`.

Devnet (gateway/devnet): GET /merkle-root/verify?root=&height= answers
`{"valid": bool}`; GET /headers/tip answers `{"height": N, "hash": ...}`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import aiohttp

from gateway.chain import ChainError, ChainTracker
from gateway.chain._http import Answer, HttpClient, transport_failure

_ROOT = re.compile(r"[0-9a-fA-F]{64}")
_STATES = frozenset({"CONFIRMED", "INVALID", "UNABLE_TO_VERIFY"})


def well_formed(root: str, height: int) -> bool:
    """Junk never needs a network round trip: it is not a valid root anywhere."""
    return (
        isinstance(root, str)
        and _ROOT.fullmatch(root) is not None
        and isinstance(height, int)
        and not isinstance(height, bool)
        and 0 <= height < 2**31  # BHS stores heights as int32
    )


class BlockHeadersTracker:
    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 5.0,
        session: aiohttp.ClientSession | None = None,
        api_prefix: str = "/api/v1",
    ) -> None:
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = HttpClient(url, timeout=timeout, session=session, headers=headers)
        self._prefix = "/" + api_prefix.strip("/") if api_prefix.strip("/") else ""

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        if not well_formed(root, height):
            return False
        root = root.lower()
        what = "block headers service merkle root verification"
        answer = await self._http.request(
            "POST",
            f"{self._prefix}/chain/merkleroot/verify",
            json_body=[{"merkleRoot": root, "blockHeight": height}],
        )
        body = _json_object(answer, what)
        state = body.get("confirmationState")
        if state not in _STATES:
            raise ChainError("bad-response", f"{what}: confirmationState {state!r}")
        if state == "CONFIRMED" and not _confirms(body.get("confirmations"), root, height):
            raise ChainError("bad-response", f"{what}: CONFIRMED without a matching confirmation")
        return state == "CONFIRMED"

    async def current_height(self) -> int:
        what = "block headers service longest tip"
        answer = await self._http.request("GET", f"{self._prefix}/chain/tip/longest")
        return _height(_json_object(answer, what), what)

    async def close(self) -> None:
        await self._http.close()


class DevnetTracker:
    def __init__(
        self, url: str, session: aiohttp.ClientSession | None = None, *, timeout: float = 5.0
    ) -> None:
        self._http = HttpClient(
            url, timeout=timeout, session=session, headers={"Accept": "application/json"}
        )

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        if not well_formed(root, height):
            return False
        what = "devnet merkle root verification"
        answer = await self._http.request(
            "GET", "/merkle-root/verify", params={"root": root.lower(), "height": str(height)}
        )
        valid = _json_object(answer, what).get("valid")
        if not isinstance(valid, bool):
            raise ChainError("bad-response", f"{what}: 'valid' is {valid!r}")
        return valid

    async def current_height(self) -> int:
        what = "devnet tip"
        answer = await self._http.request("GET", "/headers/tip")
        return _height(_json_object(answer, what), what)

    async def close(self) -> None:
        await self._http.close()


class CachingTracker:
    """Remembers answers so a payment's merkle roots rarely cost a round trip.

    - valid (root, height) pairs: kept for good (LRU, `max_entries`). A block
      that a reorg later drops would stay "valid"; for micropayments that
      risk is accepted in exchange for never asking twice.
    - invalid pairs: kept `negative_ttl` seconds only, because the block may
      simply be newer than the upstream's view.
    - concurrent lookups of one pair share one upstream call; a caller that
      is cancelled does not cancel it for the others.
    - errors are never cached: every waiter of that call gets the ChainError.
    - current_height: cached `height_ttl` seconds, also coalesced.
    """

    def __init__(
        self,
        inner: ChainTracker,
        *,
        max_entries: int = 100_000,
        negative_ttl: float = 30.0,
        height_ttl: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.inner = inner
        self.max_entries = max_entries
        self.negative_ttl = negative_ttl
        self.height_ttl = height_ttl
        self._clock = clock
        self._valid: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._invalid: OrderedDict[tuple[str, int], float] = OrderedDict()  # -> expiry
        self._pending: dict[tuple[str, int], asyncio.Future[bool]] = {}
        self._height: tuple[int, float] | None = None  # (height, expiry)
        self._height_pending: asyncio.Future[int] | None = None
        self.hits = 0
        self.upstream_calls = 0

    @property
    def size(self) -> int:
        """Remembered (root, height) pairs, valid and invalid. (Not __len__: an
        empty cache must not be falsy.)"""
        return len(self._valid) + len(self._invalid)

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        key = (str(root).lower(), height)
        cached = self._cached(key)
        if cached is not None:
            self.hits += 1
            return cached
        task = self._pending.get(key)
        if task is None:
            task = _shared(self._lookup(key))
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(task)

    async def current_height(self) -> int:
        if self._height is not None and self._clock() < self._height[1]:
            self.hits += 1
            return self._height[0]
        if self._height_pending is None:
            self._height_pending = _shared(self._fetch_height())
            self._height_pending.add_done_callback(self._height_done)
        return await asyncio.shield(self._height_pending)

    async def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()

    def _cached(self, key: tuple[str, int]) -> bool | None:
        if key in self._valid:
            self._valid.move_to_end(key)
            return True
        expiry = self._invalid.get(key)
        if expiry is None:
            return None
        if self._clock() < expiry:
            return False
        del self._invalid[key]
        return None

    async def _lookup(self, key: tuple[str, int]) -> bool:
        self.upstream_calls += 1
        valid = await self.inner.is_valid_root_for_height(*key)
        if valid is True:
            self._invalid.pop(key, None)
            _bounded_put(self._valid, key, None, self.max_entries)
        elif self.negative_ttl > 0:
            self._invalid.pop(key, None)  # re-insert at the end: expiry order = insertion order
            _bounded_put(self._invalid, key, self._clock() + self.negative_ttl, self.max_entries)
        return valid is True

    async def _fetch_height(self) -> int:
        self.upstream_calls += 1
        height = await self.inner.current_height()
        self._height = (height, self._clock() + self.height_ttl)
        return height

    def _height_done(self, _: asyncio.Future[int]) -> None:
        self._height_pending = None


def _shared(coro: Any) -> asyncio.Future[Any]:
    """A task several callers await through asyncio.shield.

    If every caller was cancelled, nobody reads its exception; read it here
    so asyncio does not log "exception was never retrieved".
    """
    task = asyncio.ensure_future(coro)
    task.add_done_callback(lambda t: None if t.cancelled() else t.exception())
    return task


def _bounded_put(store: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > limit:
        store.popitem(last=False)


def _json_object(answer: Answer, what: str) -> dict[str, Any]:
    failure = transport_failure(answer, what)
    if failure is not None:
        raise failure
    if answer.status != 200:
        raise ChainError(
            "bad-response", f"{what}: HTTP {answer.status}: {answer.text}", status=answer.status
        )
    body = answer.body
    # BHS's swagger documents the verify answer as a one-element array.
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict):
        raise ChainError("bad-response", f"{what}: not a JSON object: {answer.text!r}")
    return body


def _height(body: dict[str, Any], what: str) -> int:
    height = body.get("height")
    if not isinstance(height, int) or isinstance(height, bool) or height < 0:
        raise ChainError("bad-response", f"{what}: height is {height!r}")
    return height


def _confirms(confirmations: object, root: str, height: int) -> bool:
    """An absent list is fine; a present one must confirm exactly what we asked."""
    if confirmations is None:
        return True
    if not isinstance(confirmations, list):
        return False
    return any(
        isinstance(c, dict)
        and str(c.get("merkleRoot", "")).lower() == root
        and c.get("blockHeight") == height
        and c.get("confirmation", "CONFIRMED") == "CONFIRMED"
        for c in confirmations
    )

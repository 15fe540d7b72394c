"""Usage counters per service, route and UTC day, kept cheap on the hot path.

Counting a request is a dict update in this worker; every few seconds the
sums go to the store in one call per (day, service, route), where every
worker's and machine's sums add up. A worker that dies loses at most its
last few seconds of counts: these are statistics. The money is in the
receipts, which are written before a token leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from typing import Protocol

from gateway.store import StoreUnavailable

log = logging.getLogger("farebox.tally")

FLUSH_EVERY = 5.0  # seconds
MAX_PENDING = 10_000  # (day, service, route) keys held while the store is away


def today(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


class Counters(Protocol):
    """What the tally needs of the store."""

    async def count(self, day: str, service: str, route: str, **fields: int) -> None: ...


class Tally:
    def __init__(self, store: Counters, *, every: float = FLUSH_EVERY) -> None:
        self.store = store
        self.every = every
        self._pending: defaultdict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
        self._day = ""
        self._day_ends = 0.0

    def add(self, service: str, route: str, **fields: int) -> None:
        now = time.time()
        if now >= self._day_ends:  # the UTC day, worked out once a day, not per request
            self._day = today(now)
            self._day_ends = (now // 86400 + 1) * 86400
        counts = self._pending[(self._day, service, route)]
        for name, n in fields.items():
            if n:
                counts[name] += n

    async def flush(self) -> None:
        pending, self._pending = self._pending, defaultdict(Counter)
        for key, counts in pending.items():
            if not counts:
                continue
            try:
                await self.store.count(*key, **counts)
            except ValueError as exc:  # a bug, not an outage: say so, keep going
                log.error("store refused counts for %s: %s", key, exc)
            except StoreUnavailable:
                # Keep it for the next flush, within bounds.
                if len(self._pending) < MAX_PENDING:
                    self._pending[key].update(counts)
                else:
                    log.warning("store unavailable: dropped counts for %s", key)

    async def run(self) -> None:
        """Flush every `every` seconds until cancelled, then flush once more."""
        try:
            while True:
                await asyncio.sleep(self.every)
                await self.flush()
        except asyncio.CancelledError:
            await self.flush()
            raise

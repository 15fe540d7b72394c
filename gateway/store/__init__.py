"""Shared state behind one small protocol.

`memory` is the embedded default for one process; `redis` shares the same
contract between workers and machines (every operation atomic, every key of
one operation in one Redis Cluster slot). The contract tests in
tests/test_store_contract.py run against both.

Amounts are whole numbers in the tab's smallest unit (satoshis, or
millisatoshis for prices below a satoshi); durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from gateway.ledger import Receipt


class Outcome(Enum):
    NEW = "new"  # this caller owns the txid now and must complete or release it
    SAME = "same"  # already claimed for the same purchase (maybe still in progress)
    CONFLICT = "conflict"  # already claimed for something else


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: Outcome
    receipt: Receipt | None = None  # for SAME, once the first claimant completed
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """One fixed-window counter after an increment."""

    count: int  # hits in this window, this one included
    resets_in: int  # seconds until the window starts again


class StoreUnavailable(Exception):
    """The store cannot be reached: priced routes must fail closed."""


class Store(Protocol):
    # --- payments: one txid buys one thing ------------------------------------------
    async def claim(self, txid: str, purchase: str) -> Claim:
        """Atomically claim a txid for one purchase (service + scope)."""
        ...

    async def complete(self, txid: str, receipt: Receipt, token: str) -> None:
        """Record the receipt and token of a claimed payment (kept for good)."""
        ...

    async def release(self, txid: str, purchase: str) -> None:
        """Give up a claim whose payment failed before it was accepted."""
        ...

    async def receipt(self, txid: str) -> Receipt | None: ...

    # --- tabs: prepaid balances -----------------------------------------------------
    async def credit(self, tab: str, amount: int, once: str) -> tuple[int, bool]:
        """Add `amount` unless `once` (e.g. a txid) was credited already.

        Returns (balance, credited now).
        """
        ...

    async def reserve(self, tab: str, amount: int, reservation: str, ttl: int) -> int | None:
        """Hold `amount` for one request if the balance covers it.

        Returns the balance left after holding, or None (nothing held) when it
        does not cover it. A reservation not settled or refunded within `ttl`
        returns to the balance by itself (a worker died mid-request).
        """
        ...

    async def settle(self, tab: str, reservation: str, charge: int) -> int:
        """Charge `charge` (at most what was held), return the rest; the balance.

        Settling or refunding a reservation twice, or one that expired, changes
        nothing.
        """
        ...

    async def refund(self, tab: str, reservation: str) -> int:
        """Return everything a reservation held; the balance."""
        ...

    async def balance(self, tab: str) -> int | None:
        """The spendable balance (held amounts excluded); None for no such tab."""
        ...

    # --- free quotas ----------------------------------------------------------------
    async def hit(self, key: str, window: int) -> Window:
        """Count one request against `key` in the current fixed window."""
        ...

    # --- revocations ----------------------------------------------------------------
    async def revoke(self, grant_id: str, until: int) -> None:
        """Refuse this grant (or tab) until the unix time `until`."""
        ...

    async def revoked(self, grant_id: str) -> bool: ...

    # --- health ---------------------------------------------------------------------
    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be used."""
        ...

    async def close(self) -> None: ...

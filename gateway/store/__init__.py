"""Shared state behind one small protocol: payment claims and receipts.

`memory` is the embedded default for one process; a Redis store shares the
same contract between workers and machines.
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


class StoreUnavailable(Exception):
    """The store cannot be reached: priced routes must fail closed."""


class Store(Protocol):
    async def claim(self, txid: str, purchase: str) -> Claim:
        """Atomically claim a txid for one purchase (service + scope)."""
        ...

    async def complete(self, txid: str, receipt: Receipt, token: str) -> None:
        """Record the receipt and token of a claimed payment."""
        ...

    async def release(self, txid: str, purchase: str) -> None:
        """Give up a claim whose payment failed before it was accepted."""
        ...

    async def receipt(self, txid: str) -> Receipt | None: ...

"""The embedded store: one process, state in dicts, lost on restart."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ledger import Receipt
from gateway.store import Claim, Outcome


@dataclass
class _Entry:
    purchase: str
    receipt: Receipt | None = None
    token: str | None = None


class MemoryStore:
    def __init__(self) -> None:
        self._claims: dict[str, _Entry] = {}

    async def claim(self, txid: str, purchase: str) -> Claim:
        # No await between the check and the write: atomic on one event loop.
        entry = self._claims.get(txid)
        if entry is None:
            self._claims[txid] = _Entry(purchase)
            return Claim(Outcome.NEW)
        if entry.purchase != purchase:
            return Claim(Outcome.CONFLICT)
        return Claim(Outcome.SAME, entry.receipt, entry.token)

    async def complete(self, txid: str, receipt: Receipt, token: str) -> None:
        entry = self._claims[txid]
        entry.receipt, entry.token = receipt, token

    async def release(self, txid: str, purchase: str) -> None:
        entry = self._claims.get(txid)
        if entry is not None and entry.purchase == purchase and entry.receipt is None:
            del self._claims[txid]

    async def receipt(self, txid: str) -> Receipt | None:
        entry = self._claims.get(txid)
        return entry.receipt if entry else None

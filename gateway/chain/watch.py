"""Payment watchers: finding a payment to an address that nobody posted to us.

A phone wallet that scanned a checkout's QR code may broadcast the payment
itself instead of posting it to the checkout URL. A watcher finds it: every
transaction with an unspent output locked by the checkout's script, as BEEF,
so the cashier verifies it by SPV like any other payment (the watcher's
answer is a hint, never trusted on its own).

- `WocWatcher`: a WhatsOnChain-style HTTP API, through `gateway.chain.woc`;
  the devnet answers the same paths, so `--devnet-url` uses it too.
- `LocalWatcher`: the devnet in this process (tests, the demo).
"""

from __future__ import annotations

import logging
from typing import Protocol

from gateway.chain.woc import WhatsOnChain

log = logging.getLogger("farebox.watch")

MAX_SIGHTINGS = 5  # a checkout address with more payments than this is being played with


class WocWatcher(WhatsOnChain):
    """WhatsOnChain as a payment watcher."""

    TIMEOUT = 5.0  # a checkout's status poll waits on it

    async def payments_to(self, script: bytes) -> list[bytes]:
        """BEEFs of the transactions with an unspent output locked by `script`, in the
        API's order, at most MAX_SIGHTINGS. Raises ChainError."""
        txids = list(dict.fromkeys(utxo.txid for utxo in await self.unspent(script)))
        beefs = []
        for txid in txids[:MAX_SIGHTINGS]:
            beef = await self.beef(txid)
            if beef is None:
                log.warning("no usable BEEF for %s", txid)
                continue
            beefs.append(beef)
        return beefs


class ChainIndex(Protocol):
    """What the local watcher needs of an in-process chain (the devnet)."""

    def unspent_by_script(self, script: bytes) -> list[tuple[str, int, int, int | None]]: ...

    def beef_for(self, txid: str, *, atomic: bool = False) -> bytes: ...


class LocalWatcher:
    def __init__(self, devnet: ChainIndex) -> None:
        self.devnet = devnet

    async def payments_to(self, script: bytes) -> list[bytes]:
        found = self.devnet.unspent_by_script(script)
        txids = list(dict.fromkeys(txid for txid, _, _, _ in found))
        return [self.devnet.beef_for(txid) for txid in txids[:MAX_SIGHTINGS]]

    async def close(self) -> None:
        return None

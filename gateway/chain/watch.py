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

from gateway.chain.woc import WhatsOnChain
from gateway.devnet import Devnet

log = logging.getLogger("farebox.watch")

MAX_SIGHTINGS = 5  # a checkout address with more payments than this is being played with


class WocWatcher:
    def __init__(
        self,
        base_url: str,
        *,
        network: str = "main",
        api_key: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._woc = WhatsOnChain(base_url, network=network, api_key=api_key, timeout=timeout)

    async def payments_to(self, script: bytes) -> list[bytes]:
        """BEEFs of the transactions with an unspent output locked by `script`, in the
        API's order, at most MAX_SIGHTINGS. Raises ChainError."""
        txids = list(dict.fromkeys(utxo.txid for utxo in await self._woc.unspent(script)))
        beefs = []
        for txid in txids[:MAX_SIGHTINGS]:
            beef = await self._woc.beef(txid)
            if beef is None:
                log.warning("no usable BEEF for %s", txid)
                continue
            beefs.append(beef)
        return beefs

    async def close(self) -> None:
        await self._woc.close()


class LocalWatcher:
    def __init__(self, devnet: Devnet) -> None:
        self.devnet = devnet

    async def payments_to(self, script: bytes) -> list[bytes]:
        found = self.devnet.unspent_by_script(script)
        txids = list(dict.fromkeys(txid for txid, _, _, _ in found))
        return [self.devnet.beef_for(txid) for txid in txids[:MAX_SIGHTINGS]]

    async def close(self) -> None:
        return None

"""Payment watchers: finding a payment to an address that nobody posted to us.

A phone wallet that scanned a checkout's QR code may broadcast the payment
itself instead of posting it to the checkout URL. A watcher finds it: every
transaction with an unspent output locked by the checkout's script, as BEEF,
so the cashier verifies it by SPV like any other payment (the watcher's
answer is a hint, never trusted on its own).

- `WocWatcher`: a WhatsOnChain-style HTTP API (`/script/<hash>/unspent`,
  `/tx/<txid>/beef`); the devnet answers the same paths, so `--devnet-url`
  uses it too.
- `LocalWatcher`: the devnet in this process (tests, the demo).
"""

from __future__ import annotations

import hashlib
import logging

from gateway.chain import ChainError
from gateway.chain._http import HttpClient
from gateway.devnet import Devnet

log = logging.getLogger("farebox.watch")

MAX_SIGHTINGS = 5  # a checkout address with more payments than this is being played with


def script_hash(script: bytes) -> str:
    """WhatsOnChain's (and Electrum's) script hash: SHA-256, byte-reversed, hex."""
    return hashlib.sha256(script).digest()[::-1].hex()


class WocWatcher:
    def __init__(
        self,
        base_url: str,
        *,
        network: str = "main",
        api_key: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        headers = {"Authorization": api_key} if api_key else None
        root = base_url.rstrip("/") + f"/v1/bsv/{network}"
        self._http = HttpClient(root, timeout=timeout, headers=headers)

    async def payments_to(self, script: bytes) -> list[bytes]:
        answer = await self._http.request("GET", f"/script/{script_hash(script)}/unspent")
        if answer.status == 404:
            return []
        if answer.status != 200:
            raise ChainError("bad-response", f"unspent lookup answered {answer.status}")
        entries = answer.body
        if isinstance(entries, dict):  # newer API versions wrap the list
            entries = entries.get("result")
        if not isinstance(entries, list):
            raise ChainError("bad-response", "unspent lookup did not answer a list")
        txids = []
        for entry in entries:
            txid = entry.get("tx_hash") if isinstance(entry, dict) else None
            if isinstance(txid, str) and len(txid) == 64 and txid not in txids:
                txids.append(txid)
        beefs = []
        for txid in txids[:MAX_SIGHTINGS]:
            found = await self._http.request("GET", f"/tx/{txid}/beef")
            beef = _beef_of(found.status, found.raw, found.body)
            if beef is None:
                log.warning("no usable BEEF for %s (status %s)", txid, found.status)
                continue
            beefs.append(beef)
        return beefs

    async def close(self) -> None:
        await self._http.close()


def _beef_of(status: int, raw: bytes, body: object) -> bytes | None:
    """The BEEF of an answer: hex text, a JSON string, or {"beef": hex}."""
    if status != 200:
        return None
    if isinstance(body, dict):
        value = body.get("beef")
    elif isinstance(body, str):
        value = body
    else:
        value = raw.decode("ascii", "replace").strip()
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


class LocalWatcher:
    def __init__(self, devnet: Devnet) -> None:
        self.devnet = devnet

    async def payments_to(self, script: bytes) -> list[bytes]:
        found = self.devnet.unspent_by_script(script)
        txids = list(dict.fromkeys(txid for txid, _, _, _ in found))
        return [self.devnet.beef_for(txid) for txid in txids[:MAX_SIGHTINGS]]

    async def close(self) -> None:
        return None

"""The devnet in this process as a broadcaster (it is its own chain tracker).

Used by tests, the payment benchmark and anything that runs the devnet
in-process; it goes through the devnet's own BEEF handling, so it accepts
exactly what the devnet's ARC-style HTTP API accepts.
"""

from __future__ import annotations

from gateway.chain import BroadcastResult, classify_status
from gateway.devnet import Devnet
from gateway.devnet.http import ArcError, process_submission
from gateway.devnet.wire import WireError, parse_submission

_ATOMIC = b"\x01\x01\x01\x01"


class LocalBroadcaster:
    def __init__(self, devnet: Devnet) -> None:
        self.devnet = devnet

    async def broadcast(self, tx: bytes | str, *, txid: str | None = None) -> BroadcastResult:
        data = bytes.fromhex(tx) if isinstance(tx, str) else tx
        if data[:4] == _ATOMIC:
            txid = txid or data[4:36][::-1].hex()
            data = data[36:]
        try:
            result = process_submission(self.devnet, parse_submission(data))
        except (ArcError, WireError) as exc:
            detail = getattr(exc, "extra_info", str(exc))
            return BroadcastResult(txid or "", "REJECTED", False, True, "rejected", detail)
        if txid and result.txid != txid:
            found = self.devnet.status(txid)
            result = found if found is not None else result
        return await self.status(result.txid)

    async def status(self, txid: str) -> BroadcastResult:
        result = self.devnet.status(txid)
        if result is None:
            return BroadcastResult(txid, "", False, False, "not-found")
        accepted, rejected, reason = classify_status(str(result.status), result.reason)
        return BroadcastResult(
            txid,
            str(result.status),
            accepted,
            rejected,
            reason,
            result.reason,
            competing_txs=tuple(result.competing_txs),
            block_height=result.block_height,
            block_hash=result.block_hash,
        )

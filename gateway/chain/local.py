"""The devnet in this process as a broadcaster (it is its own chain tracker).

Used by tests, the payment benchmark and anything that runs the devnet
in-process; it goes through the devnet's own BEEF handling, so it accepts
exactly what the devnet's ARC-style HTTP API accepts.
"""

from __future__ import annotations

from gateway.bsv.beef import split_atomic
from gateway.chain import BroadcastResult, classify_status
from gateway.devnet import Devnet
from gateway.devnet.http import ArcError, process_submission
from gateway.devnet.wire import WireError, parse_submission


class LocalBroadcaster:
    def __init__(self, devnet: Devnet) -> None:
        self.devnet = devnet

    async def broadcast(self, tx: bytes | str, *, txid: str | None = None) -> BroadcastResult:
        subject, data = split_atomic(bytes.fromhex(tx) if isinstance(tx, str) else tx)
        txid = txid or subject
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

"""Runs the payout engine once, as a process the crash tests can kill at any step.

    python -m tests.payout_runner LEDGER TREASURY CHAIN_URL PAYOUTS.json [STEP[:N]]

Records the payouts in PAYOUTS.json (a list of [id, recipient key hex,
satoshis]) owed, recovers, pays what is owed in batches of 2, and with STEP
given kills itself with SIGKILL the Nth time (default first) the engine
reaches that step ("recorded", "signed", "batched", "broadcast", "marked").
Prints the engine's report as JSON when it ends on its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import asdict

from gateway.chain.arc import ArcBroadcaster
from gateway.client.wallet import Wallet
from gateway.payouts.engine import PayoutEngine, new_payout
from gateway.payouts.ledgerfile import open_ledger


async def main(
    ledger_path: str, wallet_path: str, chain_url: str, payouts_path: str, at: str
) -> None:
    step, _, nth = at.partition(":")
    seen = {"count": 0}

    def checkpoint(reached: str) -> None:
        if reached == step:
            seen["count"] += 1
            if seen["count"] == int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)

    treasury = Wallet.open(wallet_path)
    ledger = open_ledger(ledger_path)
    broadcaster = ArcBroadcaster(chain_url)
    engine = PayoutEngine(ledger, treasury, broadcaster, batch_size=2, checkpoint=checkpoint)
    with open(payouts_path) as f:
        wanted = json.load(f)
    payouts = [
        new_payout(pid, "crash-test", key, sats, treasury=treasury.identity)
        for pid, key, sats in wanted
    ]
    try:
        known = {p.id for p in await ledger.payouts()}
        await engine.record([p for p in payouts if p.id not in known])
        report = await engine.recover()
        if not report.stopped:
            await engine.pay_owed(report=report)
        print(json.dumps(asdict(report)))
    finally:
        await broadcaster.close()
        await ledger.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(*args[:4], args[4] if len(args) > 4 else ""))

"""The payout engine inside a gateway: rewards owed are paid in batches, in the background.

Every worker of every instance may run it (`payouts_wallet` set), but a lease
in the payout ledger lets one at a time sign: the others wait. A batch goes
out when `payouts_batch` payouts are owed or `payouts_interval` seconds after
the oldest was owed, whichever comes first; after a start (or a crash) the
holder first broadcasts again what was signed and not known to be sent
(engine.recover). The treasury wallet file belongs to this gateway: give it
to one instance only (two copies of one wallet would each think its coins
unspent).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path

from gateway.chain import Broadcaster
from gateway.client.errors import ClientError, InsufficientFunds, WalletBusy
from gateway.client.wallet import Wallet
from gateway.edge import metrics
from gateway.payouts.engine import Ledger, PayoutEngine, Report

log = logging.getLogger("farebox.payouts")

LEASE = "engine"
TICK = 1.0  # seconds between looks at what is owed


class PayoutRunner:
    """Runs the engine while the gateway runs; `run()` until cancelled."""

    def __init__(
        self,
        ledger: Ledger,
        wallet_path: Path,
        broadcaster: Broadcaster,
        *,
        interval: float = 10.0,
        batch_size: int = 100,
        low_balance: int | None = None,
    ) -> None:
        self.ledger = ledger
        self.wallet_path = wallet_path
        self.broadcaster = broadcaster
        self.interval = interval
        self.batch_size = batch_size
        self.low_balance = low_balance
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._recovered = False
        self._last = 0.0  # when a batch was last paid (monotonic seconds)
        self._looked = 0.0  # when signed batches were last resent and statuses asked
        self._warned = False

    def treasury(self) -> Wallet:
        """The treasury wallet as its file stands now; ClientError if unusable."""
        return Wallet.open(self.wallet_path)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a store outage, a bad wallet file: said, tried again
                log.exception("this round failed; trying again")
            await asyncio.sleep(TICK)

    async def tick(self, *, now: float | None = None) -> Report | None:
        """One look: pay if this worker holds the lease and a batch is due; the report."""
        now = time.monotonic() if now is None else now
        if not await self.ledger.lease(LEASE, self.holder, max(30.0, self.interval * 3)):
            self._recovered = False  # another holder's work since: look again when it is ours
            return None
        owed = await self.ledger.owed(self.batch_size)
        due = len(owed) >= self.batch_size or bool(owed and now - self._last >= self.interval)
        # Every interval (and first thing with the lease): send again what an
        # outage left signed, and ask how the batches in flight stand.
        look = not self._recovered or now - self._looked >= self.interval
        if not (due or look):
            return None
        try:
            treasury = self.treasury()
            with treasury.paying_out():
                return await self._round(treasury, now, due, look)
        except WalletBusy:
            return None  # a `farebox payouts send` holds it: the next round
        except ClientError as exc:
            log.error("cannot open the treasury %s: %s", self.wallet_path, exc)
            return None

    async def _round(self, treasury: Wallet, now: float, due: bool, look: bool) -> Report:
        engine = PayoutEngine(self.ledger, treasury, self.broadcaster, batch_size=self.batch_size)
        report = Report()
        if look:
            await engine.recover(report)
            self._recovered, self._looked = True, now
        if due and not report.stopped:
            self._last = now
            try:
                await engine.pay_owed(report=report)
            except InsufficientFunds as exc:
                log.error("the treasury %s cannot pay what is owed: %s", self.wallet_path, exc)
        if look:
            await engine.refresh()
            await engine.reconcile()
        self._count(report)
        self._balance(treasury)
        return report

    def _count(self, report: Report) -> None:
        for campaign, (count, satoshis) in report.campaigns.items():
            metrics.PAYOUTS.labels(campaign, "sent").inc(count)
            metrics.PAYOUT_SATOSHIS.labels(campaign).inc(satoshis)
        for txid, reason in report.refused.items():
            log.warning("batch %s refused (%s); its payouts are owed again", txid, reason)
        if report.sent:
            log.info(
                "%d paid, %d satoshis, in %d transactions (fees %d)",
                report.payouts, report.satoshis, len(report.sent), report.fees,
            )  # fmt: skip

    def _balance(self, treasury: Wallet) -> None:
        spendable = treasury.balance().satoshis
        metrics.TREASURY.set(spendable)
        low = self.low_balance is not None and spendable < self.low_balance
        if low and not self._warned:
            log.warning(
                "the treasury %s is low: %d satoshis, under %d: fund it",
                self.wallet_path, spendable, self.low_balance,
            )  # fmt: skip
        self._warned = low

"""The payout engine: owed payouts paid in batches from a treasury, at most once.

One engine for participation rewards and benefit lists (issue 15). It works
over three small parts the caller gives (protocols below): a `Ledger` (the
payouts and batches, each step one atomic write), a `Treasury` (a Farebox
wallet file: gateway.client.wallet.Wallet) and a `Broadcaster` (ARC or the
devnet, gateway.chain).

The order of the steps is what makes it crash-safe (DESIGN.md, money rule 7):

1. a payout is recorded owed (`Ledger.add`) before anything is signed;
2. the treasury signs a transaction paying up to `batch_size` owed payouts
   and reserves its coins in the wallet file;
3. the ledger records the signed transaction (its bytes) and moves its
   payouts to signed, in one write (`open_batch`);
4. the transaction is broadcast;
5. the ledger marks it sent; the treasury spends its coins and keeps the change.

A crash after 2 leaves a reservation in the treasury for a transaction
nobody else ever saw: `recover` frees it. A crash after 3 or 4 leaves a
batch signed: `recover` broadcasts the same bytes again (ARC answers for a
transaction it already has as for a new one), so the txid never changes and
nothing is paid twice. A timeout or an unreachable ARC is not a refusal: the
batch stays signed and is broadcast again later. Only a definite refusal
makes its payouts owed again, and the batch that retries them spends the
refused one's coins, so that at most one of the two can ever be mined.

`checkpoint(step)` is called after each step ("recorded", "signed",
"batched", "broadcast", "marked"), for the crash tests to stop the process
exactly there.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bsv import PrivateKey, PublicKey

from gateway.bsv.derivation import p2pkh_script, payee_key_for_sender
from gateway.chain import Broadcaster, BroadcastResult, ChainError
from gateway.client.coins import Coin, fee_for, tx_size
from gateway.client.wallet import SignedTransaction
from gateway.payouts.records import IN_FLIGHT, Batch, Payout, Tally

log = logging.getLogger("farebox.payouts")

DEFAULT_BATCH_SIZE = 100  # outputs per transaction
MAX_BATCH_SIZE = 1000
# Refusals that may mean the treasury's coins are gone (spent elsewhere). The
# coins of a refused batch are freed all the same, so that its retry spends
# them and cannot stand beside it; once its payouts stop being retried, coins
# refused for these reasons are set aside, never offered again.
COINS_GONE = frozenset(
    {
        "double-spend",
        "missing-inputs",
        "missing-ancestors",
        "missing-ancestor",
        "invalid-inputs",
        # Proofs the chain does not know (a devnet restarted, another network).
        "invalid-merkle-roots",
        "unknown-merkle-root",
        "bad-merkle-path",
    }
)


class Ledger(Protocol):
    """Where payouts and batches are kept; every method is one atomic step.
    gateway.payouts.ledgerfile.FileLedger is one. `ledger_id` names it for
    good (the treasury labels the transactions it signs for it)."""

    ledger_id: str

    async def add(self, payouts: Sequence[Payout]) -> list[Payout]: ...
    async def get(self, payout_id: str) -> Payout | None: ...
    async def owed(self, limit: int) -> list[Payout]: ...
    async def open_batch(self, batch: Batch) -> None: ...
    async def advance(self, txid: str, status: str, *, block_height: int | None = None) -> None: ...
    async def refuse(self, txid: str, reason: str, *, retry: bool = True) -> int: ...
    async def fail(self, payout_ids: Sequence[str], reason: str) -> None: ...
    async def revive(self, txid: str, status: str) -> int: ...
    async def payouts(self, *, status: str | None = None) -> list[Payout]: ...
    async def batch(self, txid: str) -> Batch | None: ...
    async def batches(self, statuses: Iterable[str]) -> list[Batch]: ...
    async def tally(self) -> Tally: ...


class Treasury(Protocol):
    """The wallet payouts are paid from (gateway.client.wallet.Wallet)."""

    identity: PrivateKey
    fee_rate: float

    def sign_outputs(
        self,
        outputs: Sequence[tuple[bytes, int]],
        *,
        label: str,
        spend_first: Iterable[tuple[str, int]] = (),
    ) -> SignedTransaction: ...
    def labelled(self, label: str) -> list[str]: ...
    def coins(self) -> list[Coin]: ...
    def reload(self) -> None: ...
    def settle(self, txid: str) -> None: ...
    def release(self, txid: str) -> None: ...
    def set_aside(self, txid: str, culprits: Iterable[tuple[str, int]], reason: str) -> None: ...
    def set_aside_coins(self, outpoints: Iterable[tuple[str, int]], reason: str) -> int: ...
    def adopt(self, beef: bytes, txid: str, inputs: Iterable[tuple[str, int]]) -> None: ...


@dataclass
class Report:
    """What one run of the engine did: batches broadcast and accepted (`sent`:
    txids), refused (`refused`: txid -> reason), left signed because the
    chain could not be reached (`unsent`), payouts paid and satoshis, fees."""

    sent: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    unsent: list[str] = field(default_factory=list)
    payouts: int = 0
    satoshis: int = 0
    fees: int = 0
    stopped: str = ""  # why paying stopped early (the chain unreachable, the treasury short)
    # campaign -> [payouts, satoshis] broadcast and taken this run
    campaigns: dict[str, list[int]] = field(default_factory=dict)


def new_payout(
    payout_id: str,
    campaign: str,
    recipient: str,
    satoshis: int,
    *,
    treasury: PrivateKey,
    address_script: bytes | None = None,
    memo: str = "",
) -> Payout:
    """An owed payout to `recipient`: an address (give its P2PKH `address_script`)
    or a compressed public key in hex, paid BRC-29 (BRC-29: the key derived
    from it with the treasury's identity key and a fresh derivation prefix
    and suffix, so a BRC-100 wallet takes it in with `internalizeAction`)."""
    if address_script is not None:
        return Payout(payout_id, campaign, recipient, address_script.hex(), satoshis, memo)
    prefix = base64.b64encode(os.urandom(12)).decode()
    suffix = base64.b64encode(os.urandom(12)).decode()
    payee = payee_key_for_sender(PublicKey(recipient), treasury, prefix, suffix)
    return Payout(
        payout_id,
        campaign,
        recipient,
        p2pkh_script(payee).hex(),
        satoshis,
        memo,
        sender=treasury.public_key().hex(),
        prefix=prefix,
        suffix=suffix,
    )


def fee_estimate(count: int, batch_size: int, fee_rate: float, coins: int = 1) -> int:
    """Satoshis of fees to pay `count` payouts in batches of `batch_size`, the
    first spending `coins` coins and each later one the change before it
    (an upper bound: sizes at their worst case)."""

    total, left, inputs = 0, count, max(1, coins)
    while left > 0:
        outputs = min(left, batch_size)
        total += fee_for(tx_size(inputs, outputs + 1), fee_rate)
        left -= outputs
        inputs = 1
    return total


class PayoutEngine:
    """Pays what the ledger owes from the treasury; see the module."""

    def __init__(
        self,
        ledger: Ledger,
        treasury: Treasury,
        broadcaster: Broadcaster,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        checkpoint: Callable[[str], None] = lambda step: None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH_SIZE}")
        self.ledger = ledger
        self.treasury = treasury
        self.broadcaster = broadcaster
        self.batch_size = batch_size
        self.checkpoint = checkpoint
        self._campaigns: dict[str, list[tuple[str, int]]] = {}  # txid -> its payouts

    async def record(self, payouts: Sequence[Payout]) -> list[Payout]:
        """Record `payouts` owed (those not recorded before); the stored records."""
        stored = await self.ledger.add(payouts)
        self.checkpoint("recorded")
        return stored

    async def recover(self, report: Report | None = None) -> Report:
        """After a start or a crash: free treasury reservations no batch holds,
        and broadcast again every batch signed but not known to be sent."""
        report = report or Report()
        for txid in self.treasury.labelled(self.ledger.ledger_id):
            if await self.ledger.batch(txid) is None:
                # Signed, then the process stopped before the ledger knew of
                # it: the transaction never left this machine.
                log.info("freeing the coins of %s, never recorded nor sent", txid)
                self.treasury.release(txid)
        for batch in await self.ledger.batches(("signed",)):
            if not await self._broadcast(batch, report):
                break
        return report

    async def pay_owed(
        self, progress: Callable[[Report], None] | None = None, report: Report | None = None
    ) -> Report:
        """Pay every owed payout, a batch at a time; stops (saying why in
        `report.stopped`) when the chain cannot be reached. InsufficientFunds
        (gateway.client.errors) if the treasury cannot pay a batch."""
        report = report or Report()
        while True:
            owed = await self.ledger.owed(self.batch_size)
            if not owed:
                return report
            batch = await self._sign(owed)
            if batch is None:
                continue  # those could not be retried safely: failed, with the reason
            if not await self._broadcast(batch, report):
                return report
            if progress is not None:
                progress(report)

    async def reconcile(self) -> int:
        """Ask the chain about the refused batches that hold failed payouts: a
        batch the chain has after all (seen, mined) paid them, and they say so
        again, and the treasury takes its coins as spent and its change back.
        Nothing is ever owed again on the chain's word that a batch is gone
        (ARC forgets, and refuses what is later mined): such payouts stay
        failed until an admin cancels them (`farebox payouts cancel`). A batch
        some of whose payouts went into another batch since is left alone.
        Returns how many payouts changed."""
        failed = {p.id for p in await self.ledger.payouts(status="failed")}
        if not failed:
            return 0
        changed = 0
        for batch in await self.ledger.batches(("failed",)):
            members = [pid for pid in batch.payouts if pid in failed]
            if not members:
                continue
            if len(members) != len(batch.payouts):
                continue  # some were paid (or are in flight) by another batch since
            on_chain = await self._on_chain(batch.txid)
            if on_chain is None:
                continue
            log.warning("refused batch %s is on chain (%s) after all: paid", batch.txid, on_chain)
            # The treasury first: a crash between the two steps is finished by
            # the next round (adopting twice changes nothing).
            self.treasury.adopt(batch.beef, batch.txid, batch.inputs)
            changed += await self.ledger.revive(batch.txid, on_chain)
        return changed

    async def _on_chain(self, txid: str) -> str | None:
        """ "seen" or "mined" when the chain has `txid`, else None (not known,
        refused, no answer: none of it is proof it never will be)."""
        try:
            result = await self.broadcaster.status(txid)
        except ChainError as exc:
            log.warning("cannot ask about refused batch %s: %s", txid, exc)
            return None
        if result.txid and result.txid.lower() != txid:
            return None
        if result.accepted:
            return "mined" if result.status == "MINED" else "seen"
        return None

    async def refresh(self) -> int:
        """Ask the chain about batches in flight: seen or mined moves them on,
        a definite refusal owes their payouts again; returns how many changed."""
        changed = 0
        for batch in await self.ledger.batches(("sent", "seen")):
            try:
                result = await self.broadcaster.status(batch.txid)
                if result.reason == "not-found":
                    # ARC took it once and lost it: the same bytes again (always
                    # safe: the same transaction cannot pay twice).
                    log.warning("%s unknown to the chain: broadcasting it again", batch.txid)
                    result = await self.broadcaster.broadcast(batch.beef, txid=batch.txid)
            except ChainError as exc:
                log.warning("cannot ask about %s: %s", batch.txid, exc)
                return changed
            if await self._apply(batch, result):
                changed += 1
        return changed

    # ----- steps ------------------------------------------------------------------

    async def _sign(self, owed: list[Payout]) -> Batch | None:
        """Sign a batch paying `owed`, or None if none of them may be paid now.

        A payout owed again after a refused batch is paid only by a batch that
        spends that batch's coins, so that the two can never both be mined.
        When none of those coins is left to spend (spent elsewhere, or the
        refused batch had been seen and settled), a retry could pay twice:
        such payouts fail, with the reason, for an admin to look at."""
        self.treasury.reload()  # another process may have spent or freed coins since
        spendable = {c.outpoint for c in self.treasury.coins() if c.spendable}
        spend_first: list[tuple[str, int]] = []
        blocked: dict[str, str] = {}  # refused txid -> why its payouts cannot be retried
        for txid in sorted({p.retry_of for p in owed if p.retry_of}):
            refused = await self.ledger.batch(txid)
            left = [] if refused is None else [o for o in refused.inputs if o in spendable]
            if not left:
                blocked[txid] = (
                    f"not retried: the coins of refused batch {txid} are spent or gone, so a "
                    "second payment could stand beside it; each run asks the chain again "
                    f"(paid, if it has {txid} after all); once you are sure it never will, "
                    "`farebox payouts cancel` it and pay under a new id"
                )
            spend_first.extend(left)
        for txid, why in blocked.items():
            stuck = [p.id for p in owed if p.retry_of == txid]
            log.error("%d payouts %s", len(stuck), why)
            await self.ledger.fail(stuck, why)
        owed = [p for p in owed if p.retry_of not in blocked]
        if not owed:
            return None
        outputs = [(bytes.fromhex(p.script), p.satoshis) for p in owed]
        signed = self.treasury.sign_outputs(
            outputs, label=self.ledger.ledger_id, spend_first=spend_first
        )
        self.checkpoint("signed")
        self._campaigns[signed.txid] = [(p.campaign, p.satoshis) for p in owed]
        batch = Batch(
            txid=signed.txid,
            payouts=tuple(p.id for p in owed),
            beef=signed.beef,
            inputs=signed.inputs,
            fee=signed.fee,
            satoshis=sum(p.satoshis for p in owed),
            created=time.time(),
        )
        await self.ledger.open_batch(batch)
        self.checkpoint("batched")
        log.info(
            "signed %s paying %d payouts, %d satoshis (fee %d)",
            batch.txid, len(owed), batch.satoshis, batch.fee,
        )  # fmt: skip
        return batch

    async def _broadcast(self, batch: Batch, report: Report) -> bool:
        """Broadcast `batch` and record the outcome; False if the chain could
        not be reached (the batch stays signed, for the next run)."""
        try:
            result = await self.broadcaster.broadcast(batch.beef, txid=batch.txid)
        except ChainError as exc:
            log.warning("%s not broadcast (%s): kept to send again", batch.txid, exc)
            report.unsent.append(batch.txid)
            report.stopped = f"the chain could not be reached: {exc}"
            return False
        self.checkpoint("broadcast")
        await self._apply(batch, result)
        self.checkpoint("marked")
        if result.rejected:
            report.refused[batch.txid] = result.reason or result.status
        else:
            report.sent.append(batch.txid)
            report.payouts += len(batch.payouts)
            report.satoshis += batch.satoshis
            report.fees += batch.fee
            for campaign, satoshis in self._campaigns.pop(batch.txid, ()):
                counted = report.campaigns.setdefault(campaign, [0, 0])
                counted[0] += 1
                counted[1] += satoshis
        return True

    async def _apply(self, batch: Batch, result: BroadcastResult) -> bool:
        """Record what the chain said of `batch`; True if its status changed."""
        if result.txid and result.txid.lower() != batch.txid:
            log.warning("an answer about %s was about %s instead: ignored", batch.txid, result.txid)
            return False
        if result.rejected:
            return await self._refused(batch, result)
        status = "sent"
        if result.status == "MINED" or result.block_height is not None:
            status = "mined"
        elif result.accepted:
            status = "seen"
        if status == batch.status or (batch.status not in IN_FLIGHT):
            return False
        await self.ledger.advance(batch.txid, status, block_height=result.block_height)
        if status != "sent":
            # The network has it: its coins are spent and its change is ours.
            # (Merely taken by ARC, its coins stay reserved: it may yet be refused.)
            self.treasury.settle(batch.txid)
        return True

    async def _refused(self, batch: Batch, result: BroadcastResult) -> bool:
        reason = result.reason or result.status.lower() or "rejected"
        log.warning("%s refused (%s): %s", batch.txid, reason, result.detail)
        if batch.status not in ("signed", "sent"):
            # Seen on the network, then refused: it may still be mined, and its
            # coins are settled already. Never paid again on this word alone.
            why = f"seen, then refused ({reason}): check {batch.txid} on chain"
            await self.ledger.refuse(batch.txid, why, retry=False)
            change = [c.outpoint for c in self.treasury.coins() if c.txid == batch.txid]
            if change:
                self.treasury.set_aside_coins(change, f"change of payout batch {why}")
            return True
        owed_again = await self.ledger.refuse(batch.txid, reason)
        if owed_again or reason not in COINS_GONE:
            self.treasury.release(batch.txid)  # its retry spends these very coins
        else:
            self.treasury.set_aside(
                batch.txid, batch.inputs, f"payout batch {batch.txid} refused: {reason}"
            )
        return True

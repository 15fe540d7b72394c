"""The devnet's transactions: the UTXO set, the mempool, and what a newcomer must pass.

Every accepted transaction is kept (a private parsed copy, its inputs linked
to the transactions they spend, so its ancestry can be walked), with its fee
and, once mined, its height. Outputs leave the UTXO set as soon as a
transaction spending them is accepted; between two valid spends of one
output the first seen wins. Rejections are kept, bounded, only so a status
query can report them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from bsv import Transaction, TransactionOutput

from gateway.bsv.scripts import script_failure

MAX_MONEY = 21_000_000 * 100_000_000  # satoshis
NULL_TXID = "00" * 32

Outpoint = tuple[str, int]  # (txid, vout)
Unspent = tuple[str, int, int, int | None]  # (txid, vout, satoshis, height or None)


class TxStatus(StrEnum):
    """ARC's names for the statuses a devnet transaction can have."""

    SEEN_ON_NETWORK = "SEEN_ON_NETWORK"
    MINED = "MINED"
    REJECTED = "REJECTED"
    DOUBLE_SPEND_ATTEMPTED = "DOUBLE_SPEND_ATTEMPTED"


class Rejection(StrEnum):
    """Why a transaction was REJECTED (the HTTP layer maps these to ARC codes)."""

    MALFORMED = "malformed"  # no inputs/outputs, duplicate outpoints, bad amounts, too big
    MISSING_INPUTS = "missing-inputs"  # spends an output that does not exist
    SCRIPT = "script"  # an unlocking script does not satisfy its locking script
    FEE = "fee"  # outputs exceed inputs, or the fee is under the policy
    MEMPOOL_FULL = "mempool-full"


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """A transaction's status as ARC would report it; `reason` says why, if not accepted."""

    txid: str
    status: TxStatus
    block_height: int | None = None
    block_hash: str | None = None
    reason: str = ""
    rejection: Rejection | None = None
    competing_txs: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        """In the mempool or mined."""
        return self.status in (TxStatus.SEEN_ON_NETWORK, TxStatus.MINED)


@dataclass(slots=True)
class Entry:
    """An accepted transaction as the ledger keeps it (never handed out)."""

    tx: Transaction  # private parsed copy, inputs linked to what they spend: callers never hold it
    raw: bytes
    fee: int  # satoshis
    height: int | None = None  # None while in the mempool


def rejected(txid: str, rejection: Rejection, reason: str) -> SubmitResult:
    """A REJECTED status for `txid`, for `rejection` because of `reason`."""
    return SubmitResult(txid, TxStatus.REJECTED, reason=reason, rejection=rejection)


def is_amount(value: object) -> bool:
    """Is `value` a whole number of satoshis between 0 and 21 million BSV?"""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_MONEY


def structure_problem(tx: Transaction) -> str | None:
    """Why `tx` is malformed on its own (inputs, outputs, amounts), in one line; None if not."""
    if not tx.inputs:
        return "transaction has no inputs"
    if not tx.outputs:
        return "transaction has no outputs"
    for vout, output in enumerate(tx.outputs):
        if not is_amount(output.satoshis):
            return f"output {vout} has an invalid amount: {output.satoshis!r}"
    if sum(o.satoshis for o in tx.outputs) > MAX_MONEY:
        return "outputs total more than 21 million BSV"
    seen: set[Outpoint] = set()
    for vin, tx_input in enumerate(tx.inputs):
        outpoint = (tx_input.source_txid, tx_input.source_output_index)
        if outpoint in seen:
            return f"input {vin} spends {outpoint[0]}:{outpoint[1]} twice"
        if outpoint[0] == NULL_TXID:
            return f"input {vin} is a coinbase input"
        seen.add(outpoint)
    return None


def _script_problem(tx: Transaction) -> str | None:
    """Runs each input's scripts against the output it spends (gateway.bsv.scripts,
    the check the gateway makes too).

    `tx` inputs must already carry `satoshis` and `locking_script` of what
    they spend.
    """
    for vin, tx_input in enumerate(tx.inputs):
        failure = script_failure(tx, vin, tx_input.satoshis, tx_input.locking_script)
        if failure is not None:
            return f"input {vin}: {failure}"
    return None


class Ledger:
    """Accepted transactions, the UTXO set, the mempool and recent rejections."""

    def __init__(self, *, rejections_kept: int = 10_000) -> None:
        self._txs: dict[str, Entry] = {}
        self._utxos: dict[Outpoint, TransactionOutput] = {}
        self._spent_by: dict[Outpoint, str] = {}
        self._mempool: dict[str, None] = {}  # insertion-ordered: parents before children
        self._rejected: OrderedDict[str, SubmitResult] = OrderedDict()
        self._rejected_cap = rejections_kept

    def entry(self, txid: str) -> Entry | None:
        """The accepted transaction `txid`, None if unknown."""
        return self._txs.get(txid)

    @property
    def mempool(self) -> list[str]:
        """Txids waiting to be mined, parents before children."""
        return list(self._mempool)

    # ----- admitting --------------------------------------------------------

    def check(
        self, tx: Transaction, txid: str, *, min_fee: int, mempool_cap: int
    ) -> SubmitResult | None:
        """None if `tx` may enter the mempool (fee at least `min_fee` satoshis, fewer
        than `mempool_cap` waiting), else why not. Cheap checks first.

        Gives each input of `tx` the amount and script it spends.
        """
        missing = self._attach_spent_outputs(tx)
        if missing:
            return rejected(txid, Rejection.MISSING_INPUTS, f"unknown outputs spent: {missing}")
        total_in = sum(i.satoshis for i in tx.inputs)
        total_out = sum(o.satoshis for o in tx.outputs)
        if total_out > total_in:
            return rejected(
                txid, Rejection.FEE, f"outputs ({total_out}) exceed inputs ({total_in})"
            )
        fee = total_in - total_out
        if fee < min_fee:
            return rejected(txid, Rejection.FEE, f"fee {fee} is below the minimum {min_fee}")
        problem = _script_problem(tx)
        if problem is not None:
            return rejected(txid, Rejection.SCRIPT, problem)
        competing = self._competing(tx)
        if competing:
            return SubmitResult(
                txid,
                TxStatus.DOUBLE_SPEND_ATTEMPTED,
                reason="an input is already spent by another transaction",
                competing_txs=competing,
            )
        if len(self._mempool) >= mempool_cap:
            return rejected(txid, Rejection.MEMPOOL_FULL, "mempool is full: mine a block")
        return None

    def _attach_spent_outputs(self, tx: Transaction) -> str:
        """Give each input the amount and script it spends; name the unknown ones."""
        missing = []
        for tx_input in tx.inputs:
            output = self.output(tx_input.source_txid, tx_input.source_output_index)
            if output is None:
                missing.append(f"{tx_input.source_txid}:{tx_input.source_output_index}")
                continue
            tx_input.satoshis = output.satoshis
            tx_input.locking_script = output.locking_script
        return ", ".join(missing)

    def _competing(self, tx: Transaction) -> tuple[str, ...]:
        found: dict[str, None] = {}
        for tx_input in tx.inputs:
            spender = self._spent_by.get((tx_input.source_txid, tx_input.source_output_index))
            if spender is not None:
                found[spender] = None
        return tuple(found)

    def accept(self, tx: Transaction, txid: str, raw: bytes) -> None:
        """Put `tx` (checked, its inputs carrying what they spend) in the mempool."""
        fee = sum(i.satoshis for i in tx.inputs) - sum(o.satoshis for o in tx.outputs)
        for tx_input in tx.inputs:  # what it spends, for walking its ancestry
            tx_input.source_transaction = self._txs[tx_input.source_txid].tx
        self.register(txid, tx, raw, fee)
        self._mempool[txid] = None
        self._rejected.pop(txid, None)

    def register(self, txid: str, tx: Transaction, raw: bytes, fee: int) -> None:
        """Record `tx` as accepted, unchecked (a coinbase): spend its inputs, add its outputs."""
        for tx_input in tx.inputs:
            outpoint = (tx_input.source_txid, tx_input.source_output_index)
            self._utxos.pop(outpoint, None)
            self._spent_by[outpoint] = txid
        for vout, output in enumerate(tx.outputs):
            self._utxos[(txid, vout)] = output
        self._txs[txid] = Entry(tx, raw, fee)

    def confirm(self, txids: tuple[str, ...], height: int) -> None:
        """Mark `txids` (all accepted) mined at `height`; they leave the mempool."""
        for txid in txids:
            self._txs[txid].height = height
            self._mempool.pop(txid, None)

    def fees(self, txids: list[str]) -> int:
        """What `txids` (all accepted) pay miners, in satoshis."""
        return sum(self._txs[t].fee for t in txids)

    def refuse(self, result: SubmitResult) -> SubmitResult:
        """Keep a rejection for status queries (the oldest go past the cap); returns it."""
        if result.txid:
            self._rejected[result.txid] = result
            self._rejected.move_to_end(result.txid)
            while len(self._rejected) > self._rejected_cap:
                self._rejected.popitem(last=False)
        return result

    def rejection(self, txid: str) -> SubmitResult | None:
        """The kept rejection of `txid`, None if there is none."""
        return self._rejected.get(txid)

    # ----- outputs ----------------------------------------------------------

    def output(self, txid: str, vout: int) -> TransactionOutput | None:
        """An output of an accepted transaction, spent or not; None if there is none."""
        entry = self._txs.get(txid)
        if entry is None or not 0 <= vout < len(entry.tx.outputs):
            return None
        return entry.tx.outputs[vout]

    def unspent(self, outpoint: Outpoint) -> TransactionOutput | None:
        """The output at `outpoint` if it is unspent, else None."""
        return self._utxos.get(outpoint)

    def unspent_by_script(self) -> dict[bytes, list[Unspent]]:
        """Every serialised locking script with unspent outputs, and those outputs."""
        by_script: dict[bytes, list[Unspent]] = {}
        for (txid, vout), output in self._utxos.items():
            by_script.setdefault(output.locking_script.serialize(), []).append(
                self._unspent(txid, vout, output)
            )
        return by_script

    def unspent_locked_by(self, script: bytes) -> list[Unspent]:
        """Unspent outputs locked by `script` (serialised), oldest first. A scan: the
        devnet is small."""
        return [
            self._unspent(txid, vout, output)
            for (txid, vout), output in self._utxos.items()
            if output.locking_script.serialize() == script
        ]

    def _unspent(self, txid: str, vout: int, output: TransactionOutput) -> Unspent:
        entry = self._txs.get(txid)
        return (txid, vout, output.satoshis or 0, entry.height if entry else None)

"""Every check a payment passes before it may buy anything.

`Transaction.verify()` in bsv-sdk is not a payment check (it accepts outputs
worth more than inputs, no inputs, duplicate inputs, and recurses without a
memo), so the checks are spelled out here, in this order, each bounded:

1. structure of every unconfirmed transaction: ≥ 1 input, no outpoint spent
   twice, every parent present, Σ inputs ≥ Σ outputs, and every input a
   standard P2PKH spend (pushes only), so each script check costs one
   signature verification, never a loop of DUP/CAT and hashes; and the
   bytes those checks hash (inputs x transaction size) within a budget;
2. the ancestry walk (a payment already in a block is refused first),
   iterative with a memo, capped in size and depth, stopping at
   transactions proven by a merkle path;
3. the payment output: P2PKH to the derived payee key, enough satoshis;
4. merkle roots of the proven ancestors, via the chain tracker;
5. the scripts of every unconfirmed input (the expensive part, so last),
   oldest transaction first — a parent's own signatures before a child's
   spend of it — yielding to the event loop after each input.

The walk (`gateway.bsv.ancestry`) and the script check (`gateway.bsv.scripts`)
are the ones the client and the devnet use too; the rules are here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bsv import Transaction

from gateway.bsv.ancestry import AncestryLimits, walk_ancestry
from gateway.bsv.beef import Beef
from gateway.bsv.scripts import nonstandard_spend, script_failure
from gateway.errors import PaymentError

# What stage timings (`Verified.timings`, `Accepted.timings`) are read with, in
# seconds: wall time by default; the payments bench sets time.thread_time to
# time CPU alone on a machine shared with other work.
STAGE_CLOCK: Callable[[], float] = time.perf_counter


class ChainTracker(Protocol):
    async def is_valid_root_for_height(self, root: str, height: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class Expectation:
    satoshis: int  # the price
    payee_script: bytes  # P2PKH locking script of the derived key
    vout: int | None  # which output pays; None: the first that pays the payee script
    exact: bool = False  # the output must carry the price exactly (x402 `exact`)
    accepted: int | None = None  # what the client says it pays (x402): the output must agree


@dataclass(slots=True)
class Verified:
    txid: str
    vout: int
    satoshis: int  # what the payment output actually carries
    transaction: Transaction
    timings: dict[str, float] = field(default_factory=dict)


async def verify_payment(
    beef: Beef,
    expect: Expectation,
    tracker: ChainTracker,
    limits: AncestryLimits = AncestryLimits(),
    *,
    allow_mined: bool = False,
) -> Verified:
    timings: dict[str, float] = {}
    stage_clock = STAGE_CLOCK
    clock = stage_clock()

    def lap(stage: str) -> None:
        nonlocal clock
        now = stage_clock()
        timings[stage] = now - clock
        clock = now

    subject = beef.subject
    if not allow_mined:  # a checkout's one-off address: a payment in a block is still its own
        check_unmined(subject)
    ancestry = walk_ancestry(subject, limits)
    for tx in ancestry.unconfirmed:
        check_structure(tx)
        check_standard(tx)
    check_cost(ancestry.unconfirmed, limits)
    lap("structure")
    vout, satoshis = check_output(subject, expect)
    lap("output")
    await check_roots(ancestry.proven, tracker)
    lap("merkle")
    for tx in reversed(ancestry.unconfirmed):  # breadth-first from the subject: oldest last
        await check_scripts(tx)
    lap("scripts")
    return Verified(subject.txid(), vout, satoshis, subject, timings)


def check_unmined(subject: Transaction) -> None:
    if subject.merkle_path is not None:
        raise PaymentError("already-mined", "the payment transaction is already in a block")


def check_structure(tx: Transaction) -> None:
    txid = tx.txid()
    if not tx.inputs:
        raise PaymentError("no-inputs", f"transaction {txid} has no inputs")
    outpoints = set()
    total_in = 0
    for index, tx_input in enumerate(tx.inputs):
        outpoint = (tx_input.source_txid, tx_input.source_output_index)
        if outpoint in outpoints:
            raise PaymentError(
                "duplicate-input", f"transaction {txid} spends {outpoint[0]}:{outpoint[1]} twice"
            )
        outpoints.add(outpoint)
        parent = tx_input.source_transaction
        if tx_input.source_output_index >= len(parent.outputs):
            raise PaymentError(
                "missing-output", f"input {index} of {txid} spends an output that does not exist"
            )
        total_in += parent.outputs[tx_input.source_output_index].satoshis
    total_out = sum(out.satoshis for out in tx.outputs)
    if total_out > total_in:
        raise PaymentError(
            "outputs-exceed-inputs",
            f"transaction {txid} spends {total_out} satoshis but has only {total_in}",
        )


def check_output(subject: Transaction, expect: Expectation) -> tuple[int, int]:
    """(vout, satoshis) of the payment output; raises PaymentError.

    With `expect.vout` None the output is found by its script (BRC-105 names
    no index, and a wallet may put change first); otherwise it must be there.
    """
    vout = expect.vout
    if vout is None:
        script = expect.payee_script
        vout = next(
            (i for i, o in enumerate(subject.outputs) if o.locking_script.serialize() == script),
            None,
        )
        if vout is None:
            raise PaymentError("wrong-payee", "no output of the transaction pays the payee key")
    if not 0 <= vout < len(subject.outputs):
        raise PaymentError("bad-vout", f"the transaction has no output {vout}")
    output = subject.outputs[vout]
    if expect.accepted is not None and output.satoshis != expect.accepted:
        # What was accepted is what is charged: checked before the price, so
        # the client learns its own payment disagrees with itself.
        raise PaymentError(
            "amount-mismatch",
            f"output {vout} pays {output.satoshis} satoshis; the payment accepted "
            f"{expect.accepted}",
        )
    if output.locking_script.serialize() != expect.payee_script:
        raise PaymentError("wrong-payee", f"output {vout} does not pay the derived payee key")
    if output.satoshis < expect.satoshis:
        raise PaymentError(
            "underpaid",
            f"output {vout} pays {output.satoshis} satoshis; the price is {expect.satoshis}",
        )
    if expect.exact and output.satoshis != expect.satoshis:
        raise PaymentError(
            "amount-not-exact",
            f"output {vout} pays {output.satoshis} satoshis; the price is exactly {expect.satoshis}",
        )
    return vout, output.satoshis


async def check_roots(proven: list[Transaction], tracker: ChainTracker) -> None:
    checked: set[tuple[str, int]] = set()
    for tx in proven:
        path = tx.merkle_path
        try:
            root = path.compute_root(tx.txid())
        except Exception:  # bsv-sdk raises assorted types for a path that lacks the txid
            raise PaymentError(
                "bad-merkle-path", f"the merkle path of {tx.txid()} does not prove it"
            ) from None
        key = (root, path.block_height)
        if key in checked:
            continue
        if not await tracker.is_valid_root_for_height(root, path.block_height):
            raise PaymentError(
                "unknown-merkle-root",
                f"no block at height {path.block_height} has merkle root {root}",
                height=path.block_height,
                merkle_root=root,
            )
        checked.add(key)


def check_cost(unconfirmed: list[Transaction], limits: AncestryLimits) -> None:
    """Refuse a payment whose script checks would hash more than the budget.

    Each input's signature check hashes a preimage that covers the whole
    transaction's outputs (bsv-sdk rebuilds it per input), so the work is
    about inputs x transaction size: many inputs and many outputs make a
    small BEEF cost seconds of CPU.
    """
    cost = sum(len(tx.inputs) * tx.byte_length() for tx in unconfirmed)
    if cost > limits.max_hashed:
        raise PaymentError(
            "too-costly",
            f"checking this payment's signatures would hash {cost:,} bytes "
            f"(at most {limits.max_hashed:,}): use fewer inputs or outputs",
        )


def check_standard(tx: Transaction) -> None:
    for index, tx_input in enumerate(tx.inputs):
        source = tx_input.source_transaction.outputs[tx_input.source_output_index]
        why = nonstandard_spend(source.locking_script, tx_input.unlocking_script)
        if why is not None:
            raise PaymentError(
                "non-standard-script", f"input {index} of {tx.txid()} is refused: {why}"
            )


async def check_scripts(tx: Transaction) -> None:
    for index, tx_input in enumerate(tx.inputs):
        source = tx_input.source_transaction.outputs[tx_input.source_output_index]
        if script_failure(tx, index, source.satoshis, source.locking_script) is not None:
            raise PaymentError("bad-script", f"input {index} of {tx.txid()} is not validly signed")
        await asyncio.sleep(0)  # one signature check at a time: other requests go between

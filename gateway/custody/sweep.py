"""Sweeping: moving what clients paid to the server key on to a treasury address.

Every accepted payment is an output locked to a one-off BRC-29 key that only
the server key can derive, and only with the receipt's derivation data (the
sender's public key, the prefix and the suffix). A sweep

1. reads receipts (`ReceiptSource`: the store's receipts index, or a file;
   from the store also the refund list's outputs that no receipt records:
   checkout payments the cashier did not take, store/refunds.py),
2. derives each output's key and asks a WhatsOnChain-style API
   (`UtxoLookup`: `gateway.chain.woc`) which outputs locked to it are still
   unspent: the chain, not a local record, says what is left, so a sweep run
   twice sweeps nothing the second time, and a sweep that died half way is
   simply run again;
3. spends them, at most `max_inputs` per transaction, in P2PKH transactions
   paying everything but the fee to the treasury address;
4. broadcasts each (Extended Format, so ARC needs no lookups of its own)
   through the configured `Broadcaster`.

Signing needs only each output's amount and locking script (BIP-143), which
the receipt and the derived key give; the unspent lookup confirms them. An
output the lookup reports at a receipt's address without a receipt (a
checkout address paid twice) is the server's too and is swept as well.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bsv import (
    P2PKH,
    PrivateKey,
    PublicKey,
    Script,
    Transaction,
    TransactionInput,
    TransactionOutput,
)
from bsv.constants import Network
from bsv.utils import Writer, decode_address

from gateway.bsv.derivation import p2pkh_script, spending_key
from gateway.chain import Broadcaster, ChainError
from gateway.chain.woc import Utxo
from gateway.store.receipts import Receipt
from gateway.store.refunds import Refund

DEFAULT_FEE_RATE = 1.0  # satoshis per 1000 bytes
DEFAULT_MAX_INPUTS = 200
UNLOCK_BYTES = 108  # the most a P2PKH unlocking script with a compressed key takes
LOOKUPS_AT_ONCE = 4  # parallel unspent lookups: polite to public APIs


class SweepError(Exception):
    """A sweep cannot start (bad address, no receipts to read, ...): one-line reason."""


# --- where receipts come from ------------------------------------------------------------


class ReceiptSource(Protocol):
    def receipts(self, since: int | None = None) -> AsyncIterator[Receipt]:
        """Every receipt accepted at or after unix time `since` (all without it)."""
        ...


class ReceiptsIndex(Protocol):
    """The part of `gateway.store.Store` a sweep reads."""

    async def receipts(
        self, *, since: int | None = None, limit: int = 1000, after: str | None = None
    ) -> list[Receipt]: ...

    async def refunds(
        self, *, since: int | None = None, limit: int = 1000, after: str | None = None
    ) -> list[Refund]: ...


class StoreReceipts:
    """Pages through a store's receipts index (ordered by time, then txid), then
    through its refund list for the outputs no receipt records."""

    def __init__(self, store: ReceiptsIndex, *, page: int = 1000) -> None:
        self.store = store
        self.page = page

    async def receipts(self, since: int | None = None) -> AsyncIterator[Receipt]:
        after = None
        while True:
            batch = await self.store.receipts(since=since, limit=self.page, after=after)
            for receipt in batch:
                yield receipt
            if len(batch) < self.page:
                break
            after = batch[-1].txid
        # A payment the cashier did not take (underpaid, paid twice, ...) has
        # no receipt: its refund entry keeps what spending it needs. The money
        # goes to the treasury like the rest; refunds are paid from there.
        after = None
        while True:
            listed = await self.store.refunds(since=since, limit=self.page, after=after)
            for refund in listed:
                if not refund.received:
                    yield refund.as_receipt()
            if len(listed) < self.page:
                return
            after = listed[-1].outpoint  # the list pages by output


class FileReceipts:
    """Receipts from a file: one `Receipt.to_json()` object per line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def receipts(self, since: int | None = None) -> AsyncIterator[Receipt]:
        try:
            lines = self.path.read_text().splitlines()
        except OSError as exc:
            raise SweepError(f"cannot read receipts file {self.path}: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                receipt = Receipt.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise SweepError(f"{self.path}:{number}: not a receipt ({exc})") from None
            if since is None or receipt.time >= since:
                yield receipt


# --- what is unspent ---------------------------------------------------------------------


class UtxoLookup(Protocol):
    async def unspent(self, script: bytes) -> list[Utxo]:
        """Unspent outputs locked by `script` (mempool included). Raises ChainError."""
        ...


class DevnetUtxos:
    """The devnet in this process (tests)."""

    def __init__(self, devnet: Any) -> None:
        self.devnet = devnet

    async def unspent(self, script: bytes) -> list[Utxo]:
        return [Utxo(t, v, s) for t, v, s, _ in self.devnet.unspent_by_script(script)]


# --- the sweep ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Coin:
    """One output to sweep and the key that spends it."""

    txid: str
    vout: int
    satoshis: int
    key: PrivateKey
    script: bytes
    receipted: bool  # False: found at a receipt's address without a receipt of its own


@dataclass
class Batch:
    txid: str
    inputs: int
    satoshis: int  # what the inputs hold
    fee: int
    status: str  # "accepted", "pending", "rejected", "unknown", "too-small", "dry-run"
    detail: str = ""

    @property
    def sent(self) -> int:
        return self.satoshis - self.fee

    @property
    def swept(self) -> bool:
        return self.status in ("accepted", "pending")


@dataclass
class SweepReport:
    receipts: int = 0  # distinct outputs with receipts that were looked at
    without_derivation: int = 0  # receipts recorded before derivation data was kept
    spent: int = 0  # receipted outputs no longer unspent (swept already, or not this key's)
    mismatched: int = 0  # the chain's amount differs from the receipt's: left alone
    extra: int = 0  # unspent outputs at a receipt's address without a receipt
    batches: list[Batch] = field(default_factory=list)
    stopped: str = ""  # why broadcasting stopped early (the chain could not be reached)

    @property
    def swept(self) -> list[Batch]:
        return [b for b in self.batches if b.swept]

    @property
    def outputs(self) -> int:
        return sum(b.inputs for b in self.swept)

    @property
    def satoshis(self) -> int:
        return sum(b.satoshis for b in self.swept)

    @property
    def fee(self) -> int:
        return sum(b.fee for b in self.swept)

    @property
    def failed(self) -> bool:
        return bool(self.stopped) or any(b.status in ("rejected", "unknown") for b in self.batches)


def treasury_script(address: str, network: str | None = None) -> bytes:
    """The P2PKH locking script of `address`; SweepError for anything else.

    With `network` ("main" or "test") an address of the other network is
    refused: it is a typo or a wrong copy, not a treasury."""
    try:
        pkh, found = decode_address(address.strip())
    except Exception:  # bsv-sdk raises assorted types for a bad checksum
        raise SweepError(f"{address!r} is not a valid P2PKH address") from None
    wanted = {"main": Network.MAINNET, "test": Network.TESTNET}.get(network or "")
    if wanted is not None and found is not wanted:
        raise SweepError(f"{address} is not a {network}net address")
    return P2PKH().lock(pkh).serialize()


async def find_coins(
    server: PrivateKey,
    source: ReceiptSource,
    utxos: UtxoLookup,
    report: SweepReport,
    *,
    since: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Coin]:
    """The unspent outputs the receipts lead to, oldest receipt first."""
    # One lookup per derived address, however many receipts share it.
    wanted: dict[bytes, tuple[PrivateKey, dict[tuple[str, int], int]]] = {}
    seen: set[tuple[str, int]] = set()
    async for receipt in source.receipts(since):
        outpoint = (receipt.txid.lower(), receipt.vout)
        if outpoint in seen:
            continue
        seen.add(outpoint)
        report.receipts += 1
        if not receipt.sweepable:
            report.without_derivation += 1
            continue
        try:
            key = spending_key(server, PublicKey(receipt.sender), receipt.prefix, receipt.suffix)
        except Exception:  # a sender that is no public key: not ours to spend
            report.without_derivation += 1
            continue
        script = p2pkh_script(key.public_key())
        wanted.setdefault(script, (key, {}))[1][outpoint] = receipt.satoshis
    progress(f"{report.receipts} receipts; checking {len(wanted)} addresses for unspent outputs")

    scripts = list(wanted)
    found: dict[bytes, list[Utxo]] = {}
    for start in range(0, len(scripts), LOOKUPS_AT_ONCE):
        chunk = scripts[start : start + LOOKUPS_AT_ONCE]
        answers = await asyncio.gather(*(utxos.unspent(s) for s in chunk))
        found.update(zip(chunk, answers, strict=True))
        done = start + len(chunk)
        if done % 100 < LOOKUPS_AT_ONCE and done < len(scripts):
            progress(f"checked {done} of {len(scripts)} addresses")

    coins: list[Coin] = []
    for script, (key, receipted) in wanted.items():
        unspent = {(u.txid, u.vout): u for u in found[script]}
        for outpoint, satoshis in receipted.items():
            utxo = unspent.pop(outpoint, None)
            if utxo is None:
                report.spent += 1
            elif utxo.satoshis != satoshis:
                report.mismatched += 1
                progress(
                    f"left alone: {outpoint[0]}:{outpoint[1]} holds {utxo.satoshis} satoshis "
                    f"by the chain's account, {satoshis} by its receipt"
                )
            else:
                coins.append(Coin(*outpoint, satoshis, key, script, True))
        for utxo in unspent.values():  # paid to the same address without a receipt
            report.extra += 1
            coins.append(Coin(utxo.txid, utxo.vout, utxo.satoshis, key, script, False))
    return coins


def build_sweep(coins: list[Coin], to_script: bytes, fee_rate: float) -> tuple[Transaction, int]:
    """A signed transaction spending `coins` to `to_script`, and its fee.

    The fee is `fee_rate` satoshis per 1000 bytes of the largest size the
    signed transaction can have. Raises SweepError when it eats everything."""
    tx = Transaction(
        [_input(coin) for coin in coins],
        [TransactionOutput(Script(to_script), sum(c.satoshis for c in coins))],
    )
    unsigned = len(tx.serialize())  # each empty unlocking script takes 1 byte
    fee = math.ceil((unsigned + len(coins) * UNLOCK_BYTES) * fee_rate / 1000)
    total = sum(c.satoshis for c in coins)
    if total - fee < 1:
        raise SweepError(f"{len(coins)} outputs of {total} satoshis do not cover a fee of {fee}")
    tx.outputs[0].satoshis = total - fee
    tx.sign()
    return tx, fee


def _input(coin: Coin) -> TransactionInput:
    tx_input = TransactionInput(
        source_txid=coin.txid,
        source_output_index=coin.vout,
        unlocking_script_template=P2PKH().unlock(coin.key),
    )
    # What BIP-143 signs: the spent output's amount and script.
    tx_input.satoshis = coin.satoshis
    tx_input.locking_script = Script(coin.script)
    return tx_input


def extended_format(tx: Transaction) -> bytes:
    """BRC-30 Extended Format: a raw transaction whose inputs also carry the
    amount and locking script they spend (bsv-sdk's `to_ef` wants the whole
    source transactions, which a sweep does not need)."""
    w = Writer()
    w.write_uint32_le(tx.version)
    w.write(b"\x00\x00\x00\x00\x00\xef")
    w.write_var_int_num(len(tx.inputs))
    for tx_input in tx.inputs:
        w.write(bytes.fromhex(tx_input.source_txid)[::-1])
        w.write_uint32_le(tx_input.source_output_index)
        unlocking = tx_input.unlocking_script.serialize()
        w.write_var_int_num(len(unlocking))
        w.write(unlocking)
        w.write_uint32_le(tx_input.sequence)
        w.write_uint64_le(tx_input.satoshis)
        locking = tx_input.locking_script.serialize()
        w.write_var_int_num(len(locking))
        w.write(locking)
    w.write_var_int_num(len(tx.outputs))
    for output in tx.outputs:
        w.write(output.serialize())
    w.write_uint32_le(tx.locktime)
    return w.to_bytes()


async def sweep(
    server: PrivateKey,
    to_address: str,
    source: ReceiptSource,
    utxos: UtxoLookup,
    broadcaster: Broadcaster | None,
    *,
    since: int | None = None,
    fee_rate: float = DEFAULT_FEE_RATE,
    max_inputs: int = DEFAULT_MAX_INPUTS,
    dry_run: bool = False,
    network: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> SweepReport:
    """Sweep every unspent output the receipts lead to into `to_address`.

    Raises SweepError before anything is sent (bad address or options) and
    ChainError when the unspent lookups fail. Once broadcasting started,
    failures are recorded in the report instead: a batch refused by the
    network ("rejected"), or a broadcast whose outcome is unknown because the
    chain could not be reached ("unknown"; broadcasting then stops). Either
    way the next sweep picks up what is still unspent.
    """
    to_script = treasury_script(to_address, network)
    if to_script == p2pkh_script(server.public_key()):
        raise SweepError("the treasury must be a key that is not on this server")
    if not fee_rate >= 0 or not math.isfinite(fee_rate):
        raise SweepError("the fee rate must be a number of satoshis per 1000 bytes, >= 0")
    if max_inputs < 1:
        raise SweepError("--max-inputs must be at least 1")
    if broadcaster is None and not dry_run:
        raise SweepError("no broadcaster: give a chain to broadcast to, or --dry-run")

    report = SweepReport()
    coins = await find_coins(server, source, utxos, report, since=since, progress=progress)
    for start in range(0, len(coins), max_inputs):
        group = coins[start : start + max_inputs]
        total = sum(c.satoshis for c in group)
        try:
            tx, fee = build_sweep(group, to_script, fee_rate)
        except SweepError as exc:
            report.batches.append(Batch("", len(group), total, 0, "too-small", str(exc)))
            progress(f"skipped: {exc}")
            continue
        batch = Batch(tx.txid(), len(group), total, fee, "dry-run")
        report.batches.append(batch)
        if dry_run:
            progress(
                f"would send {batch.sent} satoshis from {_outputs(len(group))} in {batch.txid}"
            )
            continue
        assert broadcaster is not None
        try:
            result = await broadcaster.broadcast(extended_format(tx), txid=batch.txid)
        except ChainError as exc:
            batch.status, batch.detail = "unknown", str(exc)
            report.stopped = f"chain unreachable: {exc}"
            progress(f"{batch.txid}: outcome unknown ({exc}); stopping")
            break
        if result.accepted:
            batch.status = "accepted"
        elif result.rejected:
            batch.status = "rejected"
            batch.detail = f"{result.reason}: {result.detail}".strip(": ")
        else:
            batch.status, batch.detail = "pending", result.status or result.reason
        progress(
            f"{batch.txid}: {batch.status}"
            + (f" ({batch.detail})" if batch.detail else "")
            + f", {batch.sent} satoshis from {_outputs(len(group))}, fee {fee}"
        )
    return report


def _outputs(n: int) -> str:
    return f"{n} output" if n == 1 else f"{n} outputs"


def parse_since(text: str, now: float) -> int:
    """`--since`: a duration back from now ("7d", "12h"), a UTC date
    ("2025-01-31"), an ISO 8601 time, or unix seconds."""
    import datetime

    from gateway.policy.schema import parse_duration

    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        return int(now) - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise SweepError(
            f"--since {text!r}: give a duration back from now (7d), a date (2025-01-31), "
            "an ISO time or unix seconds"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp())

"""An in-memory BSV development chain: UTXO set, mempool, blocks, faucet.

Like a regtest node, but with no I/O at all: it validates what is submitted
(structure, inputs, amounts, fee, every unlocking script with bsv-sdk's
interpreter), refuses double spends, mines blocks with real 80-byte headers
and serves BRC-74 merkle paths, so SPV code can be exercised end to end.
It is also a bsv-sdk `ChainTracker` over its own headers.

Not modelled: reorgs, coinbase maturity, lock times, sigop limits.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from bsv import (
    P2PKH,
    ChainTracker,
    MerklePath,
    PrivateKey,
    PublicKey,
    Script,
    Transaction,
    TransactionInput,
    TransactionOutput,
)
from bsv.hash import hash256
from bsv.utils import encode_pushdata

from gateway.bsv.ancestry import parents_first, walk_ancestry
from gateway.bsv.beef import write_beef
from gateway.bsv.scripts import script_failure
from gateway.devnet.merkle import merkle_path, tree_levels

COIN = 100_000_000
MAX_MONEY = 21_000_000 * COIN
NULL_TXID = "00" * 32
# Regtest's difficulty: about every other nonce gives a valid proof of work,
# so headers are genuinely "mined" at no cost.
REGTEST_BITS = 0x207FFFFF
BLOCK_VERSION = 0x20000000

Outpoint = tuple[str, int]

_PUBKEY_HEX = re.compile(r"(0[23][0-9a-fA-F]{64}|04[0-9a-fA-F]{128})")


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
    txid: str
    status: TxStatus
    block_height: int | None = None
    block_hash: str | None = None
    reason: str = ""
    rejection: Rejection | None = None
    competing_txs: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.status in (TxStatus.SEEN_ON_NETWORK, TxStatus.MINED)


@dataclass(frozen=True, slots=True)
class Block:
    height: int
    hash: str  # display order, like a txid
    header: bytes  # the 80 bytes whose sha256d is `hash`
    merkle_root: str  # display order, as `MerklePath.compute_root` returns it
    prev_hash: str
    time: int
    txids: tuple[str, ...]  # coinbase first


@dataclass(slots=True)
class _Entry:
    tx: Transaction  # private parsed copy, inputs linked to what they spend: callers never hold it
    raw: bytes
    fee: int
    height: int | None = None  # None while in the mempool


@dataclass(slots=True)
class _BlockData:
    block: Block
    levels: list[list[bytes]]
    index: dict[str, int] = field(default_factory=dict)


def _reject(txid: str, rejection: Rejection, reason: str) -> SubmitResult:
    return SubmitResult(txid, TxStatus.REJECTED, reason=reason, rejection=rejection)


def _is_amount(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_MONEY


def _structure_problem(tx: Transaction) -> str | None:
    """Checks that need nothing but the transaction itself."""
    if not tx.inputs:
        return "transaction has no inputs"
    if not tx.outputs:
        return "transaction has no outputs"
    for vout, output in enumerate(tx.outputs):
        if not _is_amount(output.satoshis):
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


def _coinbase_script(height: int) -> Script:
    # The height makes every coinbase (and so every block) unique, as BIP34 does.
    return Script(
        encode_pushdata(height.to_bytes(4, "little")) + encode_pushdata(b"farebox devnet")
    )


def _header(prev: bytes, root: bytes, timestamp: int, nonce: int) -> bytes:
    return (
        BLOCK_VERSION.to_bytes(4, "little")
        + prev
        + root
        + timestamp.to_bytes(4, "little")
        + REGTEST_BITS.to_bytes(4, "little")
        + nonce.to_bytes(4, "little")
    )


def _target(bits: int) -> int:
    return (bits & 0xFFFFFF) << (8 * ((bits >> 24) - 3))


def mine_header(prev: bytes, root: bytes, timestamp: int) -> bytes:
    """An 80-byte header meeting regtest difficulty (≈2 tries on average)."""
    target = _target(REGTEST_BITS)
    for nonce in range(1 << 32):
        header = _header(prev, root, timestamp, nonce)
        if int.from_bytes(hash256(header), "little") <= target:
            return header
    raise RuntimeError("no nonce meets the target")  # pragma: no cover


def recipient_script(recipient: str | PublicKey) -> Script:
    """P2PKH locking script for an address or a public key (object or hex)."""
    if isinstance(recipient, PublicKey):
        return P2PKH().lock(recipient.hash160())
    if not isinstance(recipient, str):
        raise TypeError("recipient must be an address, a public key hex or a PublicKey")
    if _PUBKEY_HEX.fullmatch(recipient):
        return P2PKH().lock(PublicKey(recipient).hash160())
    return P2PKH().lock(recipient)  # ValueError on a bad address or checksum


class Devnet(ChainTracker):
    """A local chain. Everything is synchronous except the ChainTracker methods."""

    def __init__(
        self,
        *,
        funding_key: PrivateKey | None = None,
        initial_supply: int = 1_000_000 * COIN,
        min_fee_sat_per_kb: int = 1,
        max_tx_bytes: int = 1_000_000,
        max_mempool: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _is_amount(initial_supply) or initial_supply <= 0:
            raise ValueError("initial_supply must be between 1 and 21 million BSV in satoshis")
        self.min_fee_sat_per_kb = min_fee_sat_per_kb
        self.max_tx_bytes = max_tx_bytes
        self.max_mempool = max_mempool
        self._clock = clock
        self._key = funding_key or PrivateKey()
        self._txs: dict[str, _Entry] = {}
        self._utxos: dict[Outpoint, TransactionOutput] = {}
        self._spent_by: dict[Outpoint, str] = {}
        self._mempool: dict[str, None] = {}  # insertion-ordered: parents before children
        self._blocks: list[_BlockData] = []
        # Rejections are kept only so GET /v1/tx can report them; bounded.
        self._rejected: OrderedDict[str, SubmitResult] = OrderedDict()
        self._rejected_cap = 10_000
        genesis = self._mine_block([], subsidy=initial_supply)
        self._faucet_coin: Outpoint | None = (genesis.txids[0], 0)

    # ----- submitting -------------------------------------------------------

    def submit(self, tx: Transaction) -> SubmitResult:
        """Validate and accept a transaction into the mempool.

        Resubmitting an accepted transaction returns its current status.
        Between two valid spends of one output the first seen wins; the
        later gets DOUBLE_SPEND_ATTEMPTED naming the winner.
        """
        problem = _structure_problem(tx)
        try:
            raw = tx.serialize()
        except (ValueError, TypeError, OverflowError, AttributeError) as exc:
            return _reject("", Rejection.MALFORMED, problem or f"cannot serialise: {exc}")
        txid = hash256(raw)[::-1].hex()
        if txid in self._txs:
            return self._status_of(txid)
        if problem is None and len(raw) > self.max_tx_bytes:
            problem = f"transaction is {len(raw)} bytes; the limit is {self.max_tx_bytes}"
        if problem is not None:
            return self._remember(_reject(txid, Rejection.MALFORMED, problem))
        own = Transaction.from_hex(raw)  # a private copy the caller cannot mutate
        result = self._validate(own, txid, len(raw))
        if result is not None:
            return self._remember(result)
        self._accept(own, txid, raw)
        return self._status_of(txid)

    def _validate(self, tx: Transaction, txid: str, size: int) -> SubmitResult | None:
        """None if `tx` may enter the mempool, else why not. Cheap checks first."""
        missing = self._attach_spent_outputs(tx)
        if missing:
            return _reject(txid, Rejection.MISSING_INPUTS, f"unknown outputs spent: {missing}")
        total_in = sum(i.satoshis for i in tx.inputs)
        total_out = sum(o.satoshis for o in tx.outputs)
        if total_out > total_in:
            return _reject(txid, Rejection.FEE, f"outputs ({total_out}) exceed inputs ({total_in})")
        fee, needed = total_in - total_out, self.required_fee(size)
        if fee < needed:
            return _reject(txid, Rejection.FEE, f"fee {fee} is below the minimum {needed}")
        problem = _script_problem(tx)
        if problem is not None:
            return _reject(txid, Rejection.SCRIPT, problem)
        competing = self._competing(tx)
        if competing:
            return SubmitResult(
                txid,
                TxStatus.DOUBLE_SPEND_ATTEMPTED,
                reason="an input is already spent by another transaction",
                competing_txs=competing,
            )
        if len(self._mempool) >= self.max_mempool:
            return _reject(txid, Rejection.MEMPOOL_FULL, "mempool is full: mine a block")
        return None

    def _attach_spent_outputs(self, tx: Transaction) -> str:
        """Give each input the amount and script it spends; name the unknown ones."""
        missing = []
        for tx_input in tx.inputs:
            output = self.get_output(tx_input.source_txid, tx_input.source_output_index)
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

    def _accept(self, tx: Transaction, txid: str, raw: bytes) -> None:
        fee = sum(i.satoshis for i in tx.inputs) - sum(o.satoshis for o in tx.outputs)
        for tx_input in tx.inputs:  # what it spends, for walking its ancestry
            tx_input.source_transaction = self._txs[tx_input.source_txid].tx
        self._register(txid, tx, raw, fee)
        self._mempool[txid] = None
        self._rejected.pop(txid, None)

    def _register(self, txid: str, tx: Transaction, raw: bytes, fee: int) -> None:
        for tx_input in tx.inputs:
            outpoint = (tx_input.source_txid, tx_input.source_output_index)
            self._utxos.pop(outpoint, None)
            self._spent_by[outpoint] = txid
        for vout, output in enumerate(tx.outputs):
            self._utxos[(txid, vout)] = output
        self._txs[txid] = _Entry(tx, raw, fee)

    def _remember(self, result: SubmitResult) -> SubmitResult:
        if result.txid:
            self._rejected[result.txid] = result
            self._rejected.move_to_end(result.txid)
            while len(self._rejected) > self._rejected_cap:
                self._rejected.popitem(last=False)
        return result

    def required_fee(self, size: int) -> int:
        """The policy's minimum fee for a transaction of `size` bytes."""
        return math.ceil(size * self.min_fee_sat_per_kb / 1000)

    # ----- mining -----------------------------------------------------------

    def mine(self, n: int = 1) -> list[Block]:
        """Mine `n` blocks; the first takes the whole mempool, the rest only a coinbase."""
        if n < 1:
            raise ValueError("mine at least one block")
        blocks = [self._mine_block(list(self._mempool))]
        blocks += [self._mine_block([]) for _ in range(n - 1)]
        return blocks

    def _mine_block(self, txids: list[str], subsidy: int = 0) -> Block:
        height = len(self._blocks)
        fees = sum(self._txs[t].fee for t in txids)
        coinbase = self._coinbase(height, subsidy + fees)
        coinbase_raw = coinbase.serialize()
        coinbase_txid = hash256(coinbase_raw)[::-1].hex()
        self._register(coinbase_txid, coinbase, coinbase_raw, 0)
        ordered = [coinbase_txid, *txids]
        levels = tree_levels([bytes.fromhex(t)[::-1] for t in ordered])
        prev = bytes.fromhex(self._blocks[-1].block.hash)[::-1] if self._blocks else bytes(32)
        timestamp = int(self._clock())
        if self._blocks:  # strictly increasing, whatever the clock does
            timestamp = max(timestamp, self._blocks[-1].block.time + 1)
        header = mine_header(prev, levels[-1][0], timestamp)
        block = Block(
            height=height,
            hash=hash256(header)[::-1].hex(),
            header=header,
            merkle_root=levels[-1][0][::-1].hex(),
            prev_hash=prev[::-1].hex(),
            time=timestamp,
            txids=tuple(ordered),
        )
        self._blocks.append(_BlockData(block, levels, {t: i for i, t in enumerate(ordered)}))
        for txid in ordered:
            self._txs[txid].height = height
            self._mempool.pop(txid, None)
        return block

    def _coinbase(self, height: int, amount: int) -> Transaction:
        # Fees (and the genesis supply) go back to the funding key.
        coinbase_input = TransactionInput(
            source_txid=NULL_TXID,
            source_output_index=0xFFFFFFFF,
            unlocking_script=_coinbase_script(height),
        )
        output = TransactionOutput(P2PKH().lock(self._key.public_key().hash160()), amount)
        return Transaction([coinbase_input], [output], version=1)

    # ----- faucet -----------------------------------------------------------

    def faucet(self, recipient: str | PublicKey, satoshis: int) -> Transaction:
        """Pay `satoshis` P2PKH to `recipient` (output 0) and mine it at once.

        The returned transaction carries its merkle path, so `tx.to_beef()`
        is a proven parent a wallet can spend. Only this transaction goes
        into the new block: other pending transactions stay pending.
        """
        if not isinstance(satoshis, int) or isinstance(satoshis, bool) or satoshis <= 0:
            raise ValueError("satoshis must be a positive integer")
        lock = recipient_script(recipient)
        if self._faucet_coin is None or self._faucet_coin not in self._utxos:
            raise RuntimeError("the faucet is dry")
        source_txid, vout = self._faucet_coin
        tx = Transaction(
            [
                TransactionInput(
                    source_transaction=self._txs[source_txid].tx,
                    source_output_index=vout,
                    unlocking_script_template=P2PKH().unlock(self._key),
                )
            ],
            [
                TransactionOutput(lock, satoshis),
                TransactionOutput(P2PKH().lock(self._key.public_key().hash160()), 0),
            ],
        )
        available = self._utxos[self._faucet_coin].satoshis
        # bsv-sdk estimates a P2PKH unlock at 107 bytes; a signature can make it 108.
        change = available - satoshis - self.required_fee(tx.estimated_byte_length() + 1)
        if change < 0:
            raise RuntimeError(f"the faucet has only {available} satoshis")
        if change == 0:
            tx.outputs.pop()
        else:
            tx.outputs[1].satoshis = change
        tx.sign()
        result = self.submit(tx)
        if not result.accepted:  # pragma: no cover - would be a devnet bug
            raise RuntimeError(f"faucet transaction refused: {result.reason}")
        self._mine_block([result.txid])
        self._faucet_coin = (result.txid, 1) if change else None
        funded = self.get_transaction(result.txid)
        assert funded is not None
        return funded

    # ----- queries ----------------------------------------------------------

    def status(self, txid: str) -> SubmitResult | None:
        """Current status of a known transaction (recent rejections included)."""
        if txid in self._txs:
            return self._status_of(txid)
        return self._rejected.get(txid)

    def _status_of(self, txid: str) -> SubmitResult:
        height = self._txs[txid].height
        if height is None:
            return SubmitResult(txid, TxStatus.SEEN_ON_NETWORK)
        return SubmitResult(txid, TxStatus.MINED, height, self._blocks[height].block.hash)

    def get_transaction(self, txid: str) -> Transaction | None:
        """A fresh copy of an accepted transaction, with `merkle_path` if mined."""
        entry = self._txs.get(txid)
        if entry is None:
            return None
        tx = Transaction.from_hex(entry.raw)
        tx.merkle_path = self.merkle_path(txid)
        return tx

    def get_output(self, txid: str, vout: int) -> TransactionOutput | None:
        """An output of an accepted transaction, spent or not."""
        entry = self._txs.get(txid)
        if entry is None or not 0 <= vout < len(entry.tx.outputs):
            return None
        return entry.tx.outputs[vout]

    def scripts_with_unspent(self) -> dict[bytes, list[tuple[str, int, int, int | None]]]:
        """Every locking script with unspent outputs, and those outputs."""
        by_script: dict[bytes, list[tuple[str, int, int, int | None]]] = {}
        for (txid, vout), output in self._utxos.items():
            entry = self._txs.get(txid)
            by_script.setdefault(output.locking_script.serialize(), []).append(
                (txid, vout, output.satoshis or 0, entry.height if entry else None)
            )
        return by_script

    def unspent_by_script(self, script: bytes) -> list[tuple[str, int, int, int | None]]:
        """Unspent outputs locked by `script`: (txid, vout, satoshis, height or None),
        oldest first. A scan: the devnet is small, and this serves only the
        WhatsOnChain-style lookup the payment watcher makes."""
        found = []
        for (txid, vout), output in self._utxos.items():
            if output.locking_script.serialize() == script:
                entry = self._txs.get(txid)
                found.append((txid, vout, output.satoshis or 0, entry.height if entry else None))
        return found

    def is_unspent(self, txid: str, vout: int) -> bool:
        return (txid, vout) in self._utxos

    def merkle_path(self, txid: str) -> MerklePath | None:
        """The BUMP proving a mined transaction against its block's header."""
        entry = self._txs.get(txid)
        if entry is None or entry.height is None:
            return None
        return self._block_path(entry.height, [txid])

    def _block_path(self, height: int, txids: list[str]) -> MerklePath:
        data = self._blocks[height]
        return merkle_path(height, data.levels, {data.index[t] for t in txids})

    @property
    def height(self) -> int:
        return len(self._blocks) - 1

    @property
    def mempool_size(self) -> int:
        return len(self._mempool)

    @property
    def funding_address(self) -> str:
        return self._key.address()

    def block(self, height: int) -> Block:
        if isinstance(height, bool) or not 0 <= height < len(self._blocks):
            raise IndexError(f"no block at height {height}")
        return self._blocks[height].block

    def header(self, height: int) -> bytes:
        return self.block(height).header

    def merkle_root(self, height: int) -> str:
        return self.block(height).merkle_root

    def root_matches(self, root: str, height: int) -> bool:
        """Synchronous `is_valid_root_for_height`."""
        try:
            return self.merkle_root(height) == root.lower()
        except (IndexError, TypeError, AttributeError):
            return False

    # ----- bsv ChainTracker -------------------------------------------------

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        return self.root_matches(root, height)

    async def current_height(self) -> int:
        return self.height

    # ----- BEEF -------------------------------------------------------------

    def beef_for(self, txid: str, *, atomic: bool = False) -> bytes:
        """BEEF V1 of a transaction and its unmined ancestry back to mined ones
        (gateway.bsv.beef's writer). With `atomic`, wrapped as BRC-95 Atomic BEEF."""
        entry = self._txs.get(txid)
        if entry is None:
            raise KeyError(f"unknown transaction {txid}")
        ancestry = walk_ancestry(entry.tx, proven=self._mined)
        copies = [self.get_transaction(tx.txid()) for tx in parents_first(ancestry)]
        return write_beef([tx for tx in copies if tx is not None], atomic=atomic)

    def _mined(self, tx: Transaction) -> bool:
        return self._txs[tx.txid()].height is not None

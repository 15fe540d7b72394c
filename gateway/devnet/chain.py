"""An in-memory BSV development chain: UTXO set, mempool, blocks, faucet.

Like a regtest node, but with no I/O at all: it validates what is submitted
(structure, inputs, amounts, fee, every unlocking script with bsv-sdk's
interpreter), refuses double spends, mines blocks with real 80-byte headers
and serves BRC-74 merkle paths, so SPV code can be exercised end to end.
It is also a bsv-sdk `ChainTracker` over its own headers.

Not modelled: reorgs, coinbase maturity, lock times, sigop limits.

`Devnet` is the chain's face; its parts hold the state: `Ledger`
(ledger.py) the transactions, the UTXO set and the mempool, `Blocks`
(blocks.py) the headers and merkle trees. Lookups that need both are here.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

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

from gateway.bsv.ancestry import parents_first, walk_ancestry
from gateway.bsv.beef import write_beef
from gateway.devnet.blocks import Block, Blocks, coinbase
from gateway.devnet.ledger import (
    Ledger,
    Outpoint,
    Rejection,
    SubmitResult,
    TxStatus,
    is_amount,
    rejected,
    structure_problem,
)

# Names defined here before the chain was split into parts; still importable.

COIN = 100_000_000  # satoshis in one BSV

_PUBKEY_HEX = re.compile(r"(0[23][0-9a-fA-F]{64}|04[0-9a-fA-F]{128})")


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
        if not is_amount(initial_supply) or initial_supply <= 0:
            raise ValueError("initial_supply must be between 1 and 21 million BSV in satoshis")
        self.min_fee_sat_per_kb = min_fee_sat_per_kb
        self.max_tx_bytes = max_tx_bytes
        self.max_mempool = max_mempool
        self._key = funding_key or PrivateKey()
        self._ledger = Ledger()
        self._blocks = Blocks(clock)
        genesis = self._mine_block([], subsidy=initial_supply)
        self._faucet_coin: Outpoint | None = (genesis.txids[0], 0)

    # ----- submitting -------------------------------------------------------

    def submit(self, tx: Transaction) -> SubmitResult:
        """Validate and accept a transaction into the mempool.

        Resubmitting an accepted transaction returns its current status.
        Between two valid spends of one output the first seen wins; the
        later gets DOUBLE_SPEND_ATTEMPTED naming the winner.
        """
        problem = structure_problem(tx)
        try:
            raw = tx.serialize()
        except (ValueError, TypeError, OverflowError, AttributeError) as exc:
            return rejected("", Rejection.MALFORMED, problem or f"cannot serialise: {exc}")
        txid = hash256(raw)[::-1].hex()
        if self._ledger.entry(txid) is not None:
            return self._status_of(txid)
        if problem is None and len(raw) > self.max_tx_bytes:
            problem = f"transaction is {len(raw)} bytes; the limit is {self.max_tx_bytes}"
        if problem is not None:
            return self._ledger.refuse(rejected(txid, Rejection.MALFORMED, problem))
        own = Transaction.from_hex(raw)  # a private copy the caller cannot mutate
        result = self._ledger.check(
            own, txid, min_fee=self.required_fee(len(raw)), mempool_cap=self.max_mempool
        )
        if result is not None:
            return self._ledger.refuse(result)
        self._ledger.accept(own, txid, raw)
        return self._status_of(txid)

    def required_fee(self, size: int) -> int:
        """The policy's minimum fee for a transaction of `size` bytes."""
        return math.ceil(size * self.min_fee_sat_per_kb / 1000)

    # ----- mining -----------------------------------------------------------

    def mine(self, n: int = 1) -> list[Block]:
        """Mine `n` blocks; the first takes the whole mempool, the rest only a coinbase."""
        if n < 1:
            raise ValueError("mine at least one block")
        blocks = [self._mine_block(self._ledger.mempool)]
        blocks += [self._mine_block([]) for _ in range(n - 1)]
        return blocks

    def _mine_block(self, txids: list[str], subsidy: int = 0) -> Block:
        # Fees (and the genesis supply) go back to the funding key.
        amount = subsidy + self._ledger.fees(txids)
        tx = coinbase(self._blocks.height + 1, amount, self._own_lock())
        raw = tx.serialize()
        coinbase_txid = hash256(raw)[::-1].hex()
        self._ledger.register(coinbase_txid, tx, raw, 0)
        block = self._blocks.add([coinbase_txid, *txids])
        self._ledger.confirm(block.txids, block.height)
        return block

    def _own_lock(self) -> Script:
        return P2PKH().lock(self._key.public_key().hash160())

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
        coin = self._ledger.unspent(self._faucet_coin) if self._faucet_coin else None
        if self._faucet_coin is None or coin is None:
            raise RuntimeError("the faucet is dry")
        source_txid, vout = self._faucet_coin
        source = self._ledger.entry(source_txid)
        assert source is not None
        tx = Transaction(
            [
                TransactionInput(
                    source_transaction=source.tx,
                    source_output_index=vout,
                    unlocking_script_template=P2PKH().unlock(self._key),
                )
            ],
            [TransactionOutput(lock, satoshis), TransactionOutput(self._own_lock(), 0)],
        )
        available = coin.satoshis
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
        if self._ledger.entry(txid) is not None:
            return self._status_of(txid)
        return self._ledger.rejection(txid)

    def _status_of(self, txid: str) -> SubmitResult:
        entry = self._ledger.entry(txid)
        assert entry is not None
        if entry.height is None:
            return SubmitResult(txid, TxStatus.SEEN_ON_NETWORK)
        return SubmitResult(txid, TxStatus.MINED, entry.height, self.block(entry.height).hash)

    def get_transaction(self, txid: str) -> Transaction | None:
        """A fresh copy of an accepted transaction, with `merkle_path` if mined."""
        entry = self._ledger.entry(txid)
        if entry is None:
            return None
        tx = Transaction.from_hex(entry.raw)
        tx.merkle_path = self.merkle_path(txid)
        return tx

    def get_output(self, txid: str, vout: int) -> TransactionOutput | None:
        """An output of an accepted transaction, spent or not."""
        return self._ledger.output(txid, vout)

    def scripts_with_unspent(self) -> dict[bytes, list[tuple[str, int, int, int | None]]]:
        """Every locking script with unspent outputs, and those outputs."""
        return self._ledger.unspent_by_script()

    def unspent_by_script(self, script: bytes) -> list[tuple[str, int, int, int | None]]:
        """Unspent outputs locked by `script`: (txid, vout, satoshis, height or None),
        oldest first. A scan: the devnet is small, and this serves only the
        WhatsOnChain-style lookup the payment watcher makes."""
        return self._ledger.unspent_locked_by(script)

    def is_unspent(self, txid: str, vout: int) -> bool:
        """Is output `vout` of `txid` accepted and not spent?"""
        return self._ledger.unspent((txid, vout)) is not None

    def merkle_path(self, txid: str) -> MerklePath | None:
        """The BUMP proving a mined transaction against its block's header."""
        entry = self._ledger.entry(txid)
        if entry is None or entry.height is None:
            return None
        return self._blocks.path(entry.height, [txid])

    @property
    def height(self) -> int:
        """The tip's height (genesis is 0)."""
        return self._blocks.height

    @property
    def mempool_size(self) -> int:
        """Transactions waiting to be mined."""
        return len(self._ledger.mempool)

    @property
    def funding_address(self) -> str:
        """The address coinbases (and the faucet's change) pay."""
        return self._key.address()

    def block(self, height: int) -> Block:
        """The block at `height`; IndexError if there is none."""
        return self._blocks.block(height)

    def header(self, height: int) -> bytes:
        """The 80-byte header at `height`; IndexError if there is none."""
        return self.block(height).header

    def merkle_root(self, height: int) -> str:
        """The merkle root (hex, display order) at `height`; IndexError if there is none."""
        return self.block(height).merkle_root

    def root_matches(self, root: str, height: int) -> bool:
        """Synchronous `is_valid_root_for_height`."""
        return self._blocks.root_matches(root, height)

    # ----- bsv ChainTracker -------------------------------------------------

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        return self.root_matches(root, height)

    async def current_height(self) -> int:
        return self.height

    # ----- BEEF -------------------------------------------------------------

    def beef_for(self, txid: str, *, atomic: bool = False) -> bytes:
        """BEEF V1 of a transaction and its unmined ancestry back to mined ones
        (gateway.bsv.beef's writer). With `atomic`, wrapped as BRC-95 Atomic BEEF."""
        entry = self._ledger.entry(txid)
        if entry is None:
            raise KeyError(f"unknown transaction {txid}")
        ancestry = walk_ancestry(entry.tx, proven=self._mined)
        copies = [self.get_transaction(tx.txid()) for tx in parents_first(ancestry)]
        return write_beef([tx for tx in copies if tx is not None], atomic=atomic)

    def _mined(self, tx: Transaction) -> bool:
        entry = self._ledger.entry(tx.txid())
        assert entry is not None  # an ancestor linked in was accepted
        return entry.height is not None

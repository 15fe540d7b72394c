"""The devnet's blocks: real 80-byte headers mined at regtest difficulty, and their proofs.

A block is its txids (coinbase first), the merkle tree over them and a
header that commits to the tree's root and the previous block; times only
go forward. Any set of a block's transactions can be proven with a BRC-74
merkle path (gateway.devnet.merkle). Which transactions go in a block, and
the coinbase that pays for it, are the caller's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bsv import MerklePath, Script, Transaction, TransactionInput, TransactionOutput
from bsv.hash import hash256
from bsv.utils import encode_pushdata

from gateway.devnet.ledger import NULL_TXID
from gateway.devnet.merkle import merkle_path, tree_levels

# Regtest's difficulty: about every other nonce gives a valid proof of work,
# so headers are genuinely "mined" at no cost.
REGTEST_BITS = 0x207FFFFF
BLOCK_VERSION = 0x20000000


@dataclass(frozen=True, slots=True)
class Block:
    """A mined block; hashes in display order (like txids)."""

    height: int
    hash: str  # display order, like a txid
    header: bytes  # the 80 bytes whose sha256d is `hash`
    merkle_root: str  # display order, as `MerklePath.compute_root` returns it
    prev_hash: str
    time: int
    txids: tuple[str, ...]  # coinbase first


@dataclass(slots=True)
class _BlockData:
    block: Block
    levels: list[list[bytes]]
    index: dict[str, int] = field(default_factory=dict)


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


def coinbase(height: int, satoshis: int, lock: Script) -> Transaction:
    """The coinbase of the block at `height`, paying `satoshis` to `lock`."""
    # The height makes every coinbase (and so every block) unique, as BIP34 does.
    script = Script(
        encode_pushdata(height.to_bytes(4, "little")) + encode_pushdata(b"farebox devnet")
    )
    coinbase_input = TransactionInput(
        source_txid=NULL_TXID, source_output_index=0xFFFFFFFF, unlocking_script=script
    )
    return Transaction([coinbase_input], [TransactionOutput(lock, satoshis)], version=1)


class Blocks:
    """The chain of blocks from genesis, with each block's merkle tree kept for proofs."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """`clock` gives Unix seconds for new headers."""
        self._clock = clock
        self._blocks: list[_BlockData] = []

    @property
    def height(self) -> int:
        """The tip's height; -1 before genesis."""
        return len(self._blocks) - 1

    def add(self, txids: list[str]) -> Block:
        """Mine a block of `txids` (display order, coinbase first) on the tip."""
        levels = tree_levels([bytes.fromhex(t)[::-1] for t in txids])
        prev = bytes.fromhex(self._blocks[-1].block.hash)[::-1] if self._blocks else bytes(32)
        timestamp = int(self._clock())
        if self._blocks:  # strictly increasing, whatever the clock does
            timestamp = max(timestamp, self._blocks[-1].block.time + 1)
        header = mine_header(prev, levels[-1][0], timestamp)
        block = Block(
            height=len(self._blocks),
            hash=hash256(header)[::-1].hex(),
            header=header,
            merkle_root=levels[-1][0][::-1].hex(),
            prev_hash=prev[::-1].hex(),
            time=timestamp,
            txids=tuple(txids),
        )
        self._blocks.append(_BlockData(block, levels, {t: i for i, t in enumerate(txids)}))
        return block

    def block(self, height: int) -> Block:
        """The block at `height`; IndexError if there is none."""
        if isinstance(height, bool) or not 0 <= height < len(self._blocks):
            raise IndexError(f"no block at height {height}")
        return self._blocks[height].block

    def path(self, height: int, txids: list[str]) -> MerklePath:
        """The BUMP proving `txids` (all in the block at `height`) against its header."""
        data = self._blocks[height]
        return merkle_path(height, data.levels, {data.index[t] for t in txids})

    def root_matches(self, root: str, height: int) -> bool:
        """Is `root` (hex, display order) the merkle root of the block at `height`?"""
        try:
            return self.block(height).merkle_root == root.lower()
        except (IndexError, TypeError, AttributeError):
            return False

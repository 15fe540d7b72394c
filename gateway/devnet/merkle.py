"""Block merkle trees and BRC-74 merkle paths (BUMPs) built from them.

Hashes are kept in internal byte order (what sha256d produces and what block
headers hold); the hex strings bsv-sdk's `MerklePath` uses are the reverse
("display" order, like txids).
"""

from __future__ import annotations

from bsv import MerklePath
from bsv.hash import hash256
from bsv.merkle_path import MerkleLeaf


class SingleTxMerklePath(MerklePath):
    """The path of the only transaction in a block: its txid is the root.

    BRC-74 and the TypeScript/Go SDKs write it as one level holding one leaf,
    and special-case it when computing the root. bsv-sdk 2.4.0's
    `MerklePath.compute_root` has no such case (it raises "Missing hash for
    index 0 at height 0", even from the constructor), so this subclass adds it.
    Only coinbase-only blocks produce such paths here; bsv-sdk readers
    (`MerklePath.from_binary`, `Transaction.from_beef`) still refuse them.
    """

    def compute_root(self, txid: str | None = None) -> str:
        if len(self.path) == 1 and len(self.path[0]) == 1:
            only = self.path[0][0].get("hash_str")
            if txid is None or txid == only:
                return str(only)
            raise ValueError(f"This proof does not contain the txid: {txid}")
        return super().compute_root(txid)


def tree_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """All levels of a block's merkle tree, leaves first, root level last.

    Bitcoin pairs an odd node out with itself, at every level.
    """
    if not leaves:
        raise ValueError("a block has at least one transaction")
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = []
        for i in range(0, len(below), 2):
            right = below[i + 1] if i + 1 < len(below) else below[i]
            above.append(hash256(below[i] + right))
        levels.append(above)
    return levels


def _display(node: bytes) -> str:
    return node[::-1].hex()


def merkle_path(block_height: int, levels: list[list[bytes]], indices: set[int]) -> MerklePath:
    """A (compound, if several indices) BUMP proving the leaves at `indices`.

    Each level holds the sibling of every node on a proven leaf's way up,
    except siblings that are themselves on such a way (they are computed), so
    bsv-sdk's offset checks in `MerklePath.__init__` accept it.
    """
    if not indices or min(indices) < 0 or max(indices) >= len(levels[0]):
        raise ValueError("leaf index out of range")
    if len(levels) == 1:
        (only,) = levels[0]
        leaf: MerkleLeaf = {"offset": 0, "hash_str": _display(only), "txid": True}
        return SingleTxMerklePath(block_height, [[leaf]])
    path: list[list[MerkleLeaf]] = []
    needed = set(indices)
    for height, level in enumerate(levels[:-1]):
        leaves: dict[int, MerkleLeaf] = {}
        if height == 0:
            for i in needed:
                leaves[i] = {"offset": i, "hash_str": _display(level[i]), "txid": True}
        for i in needed:
            sibling = i ^ 1
            if sibling in needed or sibling in leaves:
                continue
            if sibling < len(level):
                leaves[sibling] = {"offset": sibling, "hash_str": _display(level[sibling])}
            else:  # the odd node out, paired with itself
                leaves[sibling] = {"offset": sibling, "duplicate": True}
        path.append([leaves[offset] for offset in sorted(leaves)])
        needed = {i >> 1 for i in needed}
    return MerklePath(block_height, path)

"""Chain services behind two small interfaces: a chain tracker and a broadcaster.

`ChainTracker` has the shape of bsv-sdk's `bsv.chaintracker.ChainTracker`
(duck-typed: bsv-sdk only ever awaits the two methods), so our trackers can be
handed to bsv-sdk code too. Implementations: `gateway.chain.headers`
(`BlockHeadersTracker`, `DevnetTracker`, `CachingTracker`). `Broadcaster`:
`gateway.chain.arc.ArcBroadcaster`. Nothing here uses bsv-sdk's own HTTP
clients (a session per request, no timeouts).

Two kinds of failure, kept apart on purpose:
- `ChainError` (raised): the answer is unknown: service unreachable, timeout,
  5xx, our credentials refused, an answer we cannot read. The transaction may
  or may not have reached the network; nobody said no.
- `BroadcastResult(rejected=True)` (returned): the service definitely refused
  the transaction (double spend, invalid script, fee too low, ...).
A result that is neither accepted nor rejected is pending: the service took
the transaction but it has not reached the status we wait for yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "ACCEPTED_STATUSES",
    "PENDING_STATUSES",
    "REJECTED_STATUSES",
    "BroadcastResult",
    "Broadcaster",
    "ChainError",
    "ChainTracker",
    "classify_status",
]


class ChainError(Exception):
    """A chain service could not give an answer (not: it said no).

    `kind` is machine-readable: "unreachable", "timeout", "server-error",
    "unauthorized", "rate-limited", "bad-response", "generic" (ARC's 409:
    unclassified, so the outcome is unknown). `status` is the HTTP status
    when there was one.
    """

    def __init__(self, kind: str, detail: str, *, status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status


@runtime_checkable
class ChainTracker(Protocol):
    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        """True when `root` (display-order hex) is the merkle root of the block at `height`
        in the longest chain. Raises ChainError when that cannot be found out."""
        ...

    async def current_height(self) -> int:
        """Height of the longest chain's tip. Raises ChainError."""
        ...


@dataclass(frozen=True, slots=True)
class BroadcastResult:
    """What a broadcaster learnt about one transaction.

    `status` is ARC's txStatus ("" when ARC answered with an error object
    instead); `code` is ARC's status code (200, or the 4xx error code such as
    465). `reason` is "" when accepted, else a short machine-readable cause
    (see `classify_status` and `gateway.chain.arc.ERROR_REASONS`); `detail` is
    for humans. `block_height`/`block_hash`/`merkle_path` are None until mined.
    """

    txid: str
    status: str
    accepted: bool
    rejected: bool  # definite refusal; neither accepted nor rejected = pending
    reason: str = ""
    detail: str = ""
    code: int = 200
    competing_txs: tuple[str, ...] = ()
    block_height: int | None = None
    block_hash: str | None = None
    merkle_path: str | None = None  # BRC-74 BUMP hex, once mined
    extra_info: str = ""

    @property
    def pending(self) -> bool:
        return not self.accepted and not self.rejected


@runtime_checkable
class Broadcaster(Protocol):
    async def broadcast(self, tx: bytes | str, *, txid: str | None = None) -> BroadcastResult:
        """Submit a transaction: bytes are sent as binary (BEEF, Atomic BEEF, EF or
        raw: the service tells them apart by their first bytes), str as hex.

        `txid` names the transaction the caller cares about (the BEEF's
        subject); give it when the BEEF carries unconfirmed ancestors, because
        ARC then answers about the first of them. Raises ChainError when the
        outcome is unknown."""
        ...

    async def status(self, txid: str) -> BroadcastResult:
        """The service's current view of a transaction. Raises ChainError."""
        ...


# ARC txStatus -> outcome. ARC's lifecycle (doc/README.md): QUEUED, RECEIVED,
# STORED, ANNOUNCED_TO_NETWORK, REQUESTED_BY_NETWORK, SENT_TO_NETWORK,
# ACCEPTED_BY_NETWORK, SEEN_IN_ORPHAN_MEMPOOL, SEEN_ON_NETWORK, MINED; side
# branches DOUBLE_SPEND_ATTEMPTED, REJECTED, MINED_IN_STALE_BLOCK.
#
# Accepted: a node took it into its mempool (ACCEPTED_BY_NETWORK), other
# peers announced it back (SEEN_ON_NETWORK), or it is in a block (MINED).
ACCEPTED_STATUSES = frozenset({"ACCEPTED_BY_NETWORK", "SEEN_ON_NETWORK", "MINED"})
# Rejected: DOUBLE_SPEND_ATTEMPTED is not final in ARC (the tx may still win
# the race and be mined), but a merchant cannot wait for that: a payment with
# a competing spend is refused, and a later MINED can be looked up.
REJECTED_STATUSES = frozenset({"DOUBLE_SPEND_ATTEMPTED", "REJECTED"})
# Pending: taken by ARC, not yet known to the network. STORED means ARC checked
# scripts and fees but nobody checked the inputs are unspent. A stale-block
# mining is not final either: ARC rebroadcasts and it cycles again.
PENDING_STATUSES = frozenset(
    {
        "UNKNOWN",
        "QUEUED",
        "RECEIVED",
        "STORED",
        "ANNOUNCED_TO_NETWORK",
        "REQUESTED_BY_NETWORK",
        "SENT_TO_NETWORK",
        "SEEN_IN_ORPHAN_MEMPOOL",
        "MINED_IN_STALE_BLOCK",
    }
)
_PENDING_REASONS = {
    "SEEN_IN_ORPHAN_MEMPOOL": "orphan",
    "MINED_IN_STALE_BLOCK": "stale-block",
}


def classify_status(
    status: str,
    extra_info: str = "",
    accepted: frozenset[str] = ACCEPTED_STATUSES,
) -> tuple[bool, bool, str]:
    """(accepted, rejected, reason) for an ARC txStatus.

    `accepted` lets a deployment move the bar (e.g. add "STORED", or demand
    "MINED" only); rejection is never configurable. An unknown status is
    pending, not accepted: newer ARC versions may add states.
    """
    if status in REJECTED_STATUSES:
        # ARC gives a REJECTED loser of a double-spend race "double spend
        # attempted" as its extra info (doc/README.md, Double spending).
        if status == "DOUBLE_SPEND_ATTEMPTED" or "double spend" in extra_info.lower():
            return False, True, "double-spend"
        return False, True, "rejected"
    if status in accepted:
        return True, False, ""
    if status in PENDING_STATUSES or status in ACCEPTED_STATUSES:
        return False, False, _PENDING_REASONS.get(status, "pending")
    return False, False, "unknown-status"

"""What the payout engine keeps: payouts and the batches (transactions) paying them.

Plain data, no I/O. A payout's life (DESIGN.md, money rule 7):

    owed ──► signed (in a batch: txid and vout fixed) ──► sent ──► seen ──► mined
      ▲          │
      └──────────┘  the batch was refused for sure: owed again (retried, with
                    the reason), or `failed` after MAX_ATTEMPTS refusals, or when
                    no retry can be sure not to stand beside it; a failed payout
                    an admin will not have paid is `cancelled`

A reward is first `reserved` (its budget held) while the participation goes
upstream, and owed once the upstream recorded it (2xx); a benefit list's
rows are recorded owed at once. A payout is written `owed` before anything
is signed; it moves to `signed`
in the same step that records the signed transaction (raw bytes kept), so a
restart finds the transaction and broadcasts those very bytes again instead
of signing a second one. Only a definite refusal from the network (ARC's
REJECTED or DOUBLE_SPEND_ATTEMPTED, never a timeout) sends it back to owed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STATUSES = ("reserved", "owed", "signed", "sent", "seen", "mined", "failed", "cancelled")
IN_FLIGHT = ("signed", "sent", "seen")  # a batch's status until mined or failed
PAID = ("sent", "seen", "mined")  # the network has the transaction
BATCH_STATUSES = ("signed", "sent", "seen", "mined", "failed")
MAX_ATTEMPTS = 3  # definite refusals before a payout is `failed` for an admin to look at


@dataclass(frozen=True, slots=True)
class Payout:
    """One payment owed to one person.

    `id` is the idempotency key (a list's row id; a reward's campaign and
    participant). `script` is the locking script paid (hex): P2PKH to an
    address, or for a public key to the BRC-29 key derived from it with
    `sender` (the treasury's identity key) and `prefix`/`suffix`, fixed when
    the payout is recorded so that every attempt pays the same script.
    `satoshis` > 0. `txid`/`vout` once signed; `reason` says why the last
    attempt was refused; `attempts` counts refusals. Times are Unix seconds.
    """

    id: str
    campaign: str
    recipient: str  # an address or a compressed public key (hex), as given
    script: str
    satoshis: int
    memo: str = ""
    sender: str | None = None  # BRC-29 senderIdentityKey, for key recipients
    prefix: str | None = None  # BRC-29 derivation prefix (base64)
    suffix: str | None = None  # BRC-29 derivation suffix (base64)
    status: str = "owed"
    txid: str | None = None
    vout: int | None = None
    reason: str = ""
    attempts: int = 0
    retry_of: str | None = None  # the refused batch whose inputs the next one must spend
    created: float = 0.0
    updated: float = 0.0
    # A reward's secret: the recipient reads the payout at a URL holding it.
    ticket: str | None = None
    day: str = ""  # a reward's: the UTC day (YYYY-MM-DD) whose budget it was charged to

    @property
    def derived(self) -> bool:
        """True when paid BRC-29 (to a key), so a wallet takes it in with its derivation data."""
        return self.prefix is not None


@dataclass(frozen=True, slots=True)
class Batch:
    """One transaction paying many payouts: `payouts` their ids in output order
    (vout 0, 1, ...; change, if any, after them), `beef` its Atomic BEEF
    (BRC-95) as signed, `inputs` the treasury outpoints it spends, `fee` and
    `satoshis` (paid out) in satoshis, `status` of BATCH_STATUSES."""

    txid: str
    payouts: tuple[str, ...]
    beef: bytes
    inputs: tuple[tuple[str, int], ...]
    fee: int
    satoshis: int
    status: str = "signed"
    reason: str = ""
    created: float = 0.0
    updated: float = 0.0
    block_height: int | None = None


@dataclass(frozen=True, slots=True)
class Tally:
    """Payouts by status: count and satoshis each."""

    counts: dict[str, int] = field(default_factory=dict)
    satoshis: dict[str, int] = field(default_factory=dict)

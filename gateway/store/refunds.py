"""The refund list: checkout payments that bought nothing anybody collected.

A phone wallet may pay a paywall checkout after it expired, or pay too
little, or pay one that is no longer for sale. The money is at an address
only the server key can spend, and it is the citizen's: each such payment is
listed here, once per output (`outpoint`, "txid:vout": one transaction may
pay several checkouts), with what was paid, to which checkout, when, and why
it is on the list, so the admin can refund or honour it. An entry keeps the
derivation data of its output (BRC-29 with the "anyone" sender), so
`farebox sweep` can spend it even when no receipt was recorded.

Entries are money records: kept for good, like receipts. One is settled
(`settled`) when its grant reached the page after all, or by the admin
(refunded, honoured); settling never removes it. Settled `refunded`, an
entry's grant (if it bought one) is revoked and its checkout no longer
answers with it: the money and the grant never both go back.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, replace
from typing import Any

from gateway.store.receipts import DERIVATION_FIELDS, Receipt

# Why a payment is on the list (`Refund.reason`).
UNCLAIMED = "unclaimed"  # paid in full, recorded late (receipt, grant) but never collected
UNDERPAID = "underpaid"  # less than the checkout's price: no receipt, no grant
PAID_TWICE = "paid-twice"  # the checkout had been paid by another transaction
NOT_FOR_SALE = "not-for-sale"  # the policy no longer sells what the checkout named
MINED = "mined"  # already in a block when found: the cashier takes unconfirmed payments only
PAYMENT_REUSED = "payment-reused"  # the transaction had bought something else already
REASONS = (UNCLAIMED, UNDERPAID, PAID_TWICE, NOT_FOR_SALE, MINED, PAYMENT_REUSED)

# How an entry was settled (`Refund.settled`).
DELIVERED = "grant-delivered"  # the page collected the grant after all
REFUNDED = "refunded"  # the admin paid the money back
HONOURED = "honoured"  # the admin gave what was paid for another way
SETTLED = (DELIVERED, REFUNDED, HONOURED)


def outpoint(txid: str, vout: int) -> str:
    """What names one listed entry: "txid:vout"."""
    return f"{txid}:{vout}"


@dataclass(frozen=True, slots=True)
class Refund:
    txid: str
    vout: int  # the output paying the checkout
    satoshis: int  # what that output holds
    price: int  # what the checkout asked, satoshis
    checkout: str  # the checkout's id
    service: str
    resource: str  # the path the checkout was for
    method: str
    address: str  # the checkout's payee address
    expired: int  # unix seconds the checkout expired
    time: int  # unix seconds Farebox found and listed the payment
    reason: str  # one of REASONS
    detail: str  # the reason in words
    grant_id: str = ""  # UNCLAIMED: the grant it bought (its receipt names it too)
    # How to derive the key that spends output `vout` (see store/receipts.py).
    sender: str = ""
    prefix: str = ""
    suffix: str = ""
    settled: str = ""  # "" while open, else one of SETTLED
    settled_time: int = 0  # unix seconds it was settled

    @property
    def outpoint(self) -> str:
        """The entry's key on the list ("txid:vout")."""
        return f"{self.txid}:{self.vout}"

    @property
    def received(self) -> bool:
        """Whether a receipt records this output (UNCLAIMED): else only this entry does."""
        return bool(self.grant_id)

    def to_json(self) -> dict[str, Any]:
        """Every field (the storage form; exports leave out DERIVATION_FIELDS)."""
        return asdict(self)

    def exported(self) -> dict[str, Any]:
        """What the admin sees: everything but the derivation data."""
        return {k: v for k, v in asdict(self).items() if k not in DERIVATION_FIELDS}

    def settle(self, how: str, at: int) -> Refund:
        return replace(self, settled=how, settled_time=at)

    def as_receipt(self) -> Receipt:
        """The output as sweeping reads it: a receipt-shaped record with no grant."""
        return Receipt(
            txid=self.txid,
            vout=self.vout,
            satoshis=self.satoshis,
            service=self.service,
            resource=self.resource,
            method=self.method,
            grant_id=self.grant_id,
            time=self.time,
            expires=self.expired,
            payer="",
            sender=self.sender,
            prefix=self.prefix,
            suffix=self.suffix,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Refund:
        values = {}
        for name, spec in cls.__dataclass_fields__.items():
            if name in data:
                values[name] = data[name]
            elif spec.default is MISSING:
                raise KeyError(name)
        return cls(**values)

"""Receipts: the record every accepted payment leaves before its token is sent.

The store keeps them (claims, the receipts index); the journal
(ledger/journal.py) copies them to a file; the payer sees them without the
derivation fields."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

# The fields that let the server key spend the output (BRC-29): `sender` is the
# payer's identity key, which is personal data. They are stored with the
# receipt for `farebox sweep` and must never leave the server in exports
# (admin API, CSV, transparency report): `payer` (a hash) is there for that.
DERIVATION_FIELDS = ("sender", "prefix", "suffix")


@dataclass(frozen=True, slots=True)
class Receipt:
    txid: str
    vout: int
    satoshis: int
    service: str
    resource: str  # what was bought: a canonical path, or a route pattern
    method: str
    grant_id: str
    time: int  # unix seconds of acceptance
    expires: int  # when the grant ends
    payer: str  # hash of the payer's identity key
    # How to derive the key that spends output `vout` (empty on receipts
    # recorded before Farebox kept them): the BRC-29 sender's public key
    # (compressed hex: the payer's identity key, or the well-known "anyone"
    # key for a checkout), the derivation prefix and suffix.
    sender: str = ""
    prefix: str = ""
    suffix: str = ""

    @property
    def sweepable(self) -> bool:
        """Whether the derivation data needed to spend this output was recorded."""
        return bool(self.sender and self.prefix and self.suffix)

    def to_json(self) -> dict[str, Any]:
        """Every field: the storage form (the payer is shown it without DERIVATION_FIELDS).

        Every field is a str or an int, so no deep copy is needed (asdict's
        recursion cost more than the rest of recording a payment)."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Receipt:
        values = {}
        for name, spec in cls.__dataclass_fields__.items():
            if name in data:
                values[name] = data[name]
            elif spec.default is MISSING:
                raise KeyError(name)
        return cls(**values)


_FIELDS = tuple(f.name for f in fields(Receipt))

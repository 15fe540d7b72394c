"""Receipts: the record every accepted payment leaves before its token is sent."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Receipt:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

"""Receipts: the record every accepted payment leaves before its token is sent."""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
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
        """Every field: the storage form (and what the payer who holds the token sees)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Receipt:
        values = {}
        for name, spec in cls.__dataclass_fields__.items():
            if name in data:
                values[name] = data[name]
            elif spec.default is MISSING:
                raise KeyError(name)
        return cls(**values)


class Journal:
    """Receipts appended to a file, one JSON line each (mode 0600).

    The store holds receipts for the admin API and the report; this file
    is the copy that survives the store (the memory store dies with the
    process), and `farebox sweep --receipts FILE` reads it: without a
    receipt's derivation data, what it paid cannot be spent. Lines are
    written whole with O_APPEND (workers may share the file); they reach the
    OS at once but are not fsynced, so a power cut may lose the last ones.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, receipt: Receipt) -> None:
        os.write(self._fd, (json.dumps(receipt.to_json()) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)

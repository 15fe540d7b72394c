"""What a wallet records about payments: prepared, pending, taken; and its balance.

Plain data, written to the wallet file as JSON (walletfile.py).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from gateway.client.coins import Coin


@dataclass(frozen=True, slots=True)
class Balance:
    satoshis: int  # spendable now
    coins: int
    pending_satoshis: int  # reserved by payments whose outcome is not known yet
    pending_coins: int
    set_aside_satoshis: int = 0  # in coins a gateway refused (`Coin.set_aside` says why)
    set_aside_coins: int = 0


@dataclass(frozen=True, slots=True)
class PreparedPayment:
    """A signed payment, its coins reserved, not yet taken by anyone."""

    txid: str
    beef: bytes  # Atomic BEEF: the transaction and its ancestry
    vout: int  # the output that pays
    satoshis: int  # what the payee gets
    fee: int
    sender: str  # identity public key, hex: x-bsv-sender
    prefix: str  # derivation prefix: x-bsv-nonce
    time_ms: str  # x-bsv-time; the derivation suffix is its base64
    inputs: tuple[tuple[str, int], ...]
    change: Coin | None

    @property
    def suffix(self) -> str:
        return base64.b64encode(self.time_ms.encode()).decode()

    def to_json(self) -> dict[str, Any]:
        return {
            "txid": self.txid,
            "beef": self.beef.hex(),
            "vout": self.vout,
            "satoshis": self.satoshis,
            "fee": self.fee,
            "sender": self.sender,
            "prefix": self.prefix,
            "time_ms": self.time_ms,
            "inputs": [list(i) for i in self.inputs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], change: Coin | None) -> PreparedPayment:
        return cls(
            txid=str(data["txid"]),
            beef=bytes.fromhex(str(data["beef"])),
            vout=int(data["vout"]),
            satoshis=int(data["satoshis"]),
            fee=int(data["fee"]),
            sender=str(data["sender"]),
            prefix=str(data["prefix"]),
            time_ms=str(data["time_ms"]),
            inputs=tuple((str(t), int(v)) for t, v in data["inputs"]),
            change=change,
        )


@dataclass(frozen=True, slots=True)
class Purpose:
    """What a payment buys, so an unsettled one is sent again for that alone."""

    origin: str  # the gateway, scheme://host[:port]
    what: str  # a resource's path, or "tab <scope> <tab id, or new>"
    server: str = ""  # the gateway's identity key, hex


@dataclass(frozen=True, slots=True)
class PendingPayment:
    """A payment handed over (or about to be) whose outcome the wallet does not know."""

    txid: str
    change: Coin | None
    payment: PreparedPayment | None  # None in files written before payments were kept
    purpose: Purpose | None
    since: float  # Unix seconds: when it was built
    # The network has it: its coins are spent and its change is a coin; kept
    # only so that the gateway, asked again, hands over what it bought.
    on_chain: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "txid": self.txid,
            "change": None if self.change is None else self.change.to_json(),
            "payment": None if self.payment is None else self.payment.to_json(),
            "purpose": None
            if self.purpose is None
            else {
                "origin": self.purpose.origin,
                "what": self.purpose.what,
                "server": self.purpose.server,
            },
            "since": self.since,
            "on_chain": self.on_chain,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PendingPayment:
        change = None if data.get("change") is None else Coin.from_json(data["change"])
        payment, purpose = data.get("payment"), data.get("purpose")
        return cls(
            txid=str(data["txid"]),
            change=change,
            payment=None if payment is None else PreparedPayment.from_json(payment, change),
            purpose=None
            if purpose is None
            else Purpose(str(purpose["origin"]), str(purpose["what"]), str(purpose["server"])),
            since=_finite(data.get("since") or 0),
            on_chain=bool(data.get("on_chain")),
        )


@dataclass(frozen=True, slots=True)
class Paid:
    """A payment a gateway took: the wallet's own record of what it bought."""

    txid: str
    origin: str
    what: str  # as Purpose.what
    satoshis: int
    fee: int
    time: float  # Unix seconds: when it was settled

    def to_json(self) -> dict[str, Any]:
        return {
            "txid": self.txid,
            "origin": self.origin,
            "what": self.what,
            "satoshis": self.satoshis,
            "fee": self.fee,
            "time": self.time,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Paid:
        return cls(
            txid=str(data["txid"]),
            origin=str(data["origin"]),
            what=str(data["what"]),
            satoshis=int(data["satoshis"]),
            fee=int(data["fee"]),
            time=_finite(data["time"]),
        )


HISTORY = 1000  # payments remembered, newest kept


def _finite(value: object) -> float:
    """A number of seconds from the file; ValueError for NaN, infinities or junk."""
    number = float(value)  # type: ignore[arg-type]
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"not a time: {value!r}")
    return number

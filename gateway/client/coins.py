"""Coins (the wallet's unspent outputs), fees and coin selection."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from gateway.client.errors import InsufficientFunds, WalletError

# Sizes of a P2PKH spend. The unlocking script is budgeted at its worst case,
# 108 bytes (push, 72-byte DER signature + sighash byte, push, 33-byte key),
# so a fee computed before signing is never short after it.
P2PKH_INPUT_BYTES = 32 + 4 + 1 + 108 + 4
P2PKH_OUTPUT_BYTES = 8 + 1 + 25
DEFAULT_FEE_RATE = 1.0  # satoshis per 1000 bytes: the devnet's (and today's miners') policy


@dataclass(frozen=True, slots=True)
class Coin:
    """One spendable output and everything needed to spend and prove it."""

    txid: str
    vout: int
    satoshis: int
    script: str  # locking script, hex (P2PKH to the key below)
    beef: str  # hex BEEF V1 holding `txid` and its ancestry back to mined transactions
    key_index: int | None = None  # wallet key that spends it...
    wif: str | None = None  # ...or an imported key
    reserved_by: str | None = None  # txid of a payment in flight that spends it
    # Why a gateway would not take this coin (its proof unknown there, spent
    # elsewhere): never chosen again until restored. None: spendable.
    set_aside: str | None = None

    @property
    def outpoint(self) -> tuple[str, int]:
        return (self.txid, self.vout)

    @property
    def spendable(self) -> bool:
        """Neither reserved by a payment in flight nor set aside."""
        return self.reserved_by is None and self.set_aside is None

    def reserved(self, txid: str | None) -> Coin:
        return replace(self, reserved_by=txid)

    def to_json(self) -> dict[str, Any]:
        return {
            "txid": self.txid,
            "vout": self.vout,
            "satoshis": self.satoshis,
            "script": self.script,
            "key_index": self.key_index,
            "wif": self.wif,
            "reserved_by": self.reserved_by,
            "set_aside": self.set_aside,
            "beef": self.beef,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Coin:
        try:
            coin = cls(
                txid=str(data["txid"]),
                vout=int(data["vout"]),
                satoshis=int(data["satoshis"]),
                script=str(data["script"]),
                beef=str(data["beef"]),
                key_index=None if data.get("key_index") is None else int(data["key_index"]),
                wif=None if data.get("wif") is None else str(data["wif"]),
                reserved_by=None if data.get("reserved_by") is None else str(data["reserved_by"]),
                set_aside=None if data.get("set_aside") is None else str(data["set_aside"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WalletError(f"a coin in the wallet file is malformed: {exc!r}") from None
        if (coin.key_index is None) == (coin.wif is None):
            raise WalletError(f"coin {coin.txid}:{coin.vout} needs exactly one of key_index, wif")
        return coin


def _varint_len(n: int) -> int:
    return 1 if n < 0xFD else 3 if n <= 0xFFFF else 5 if n <= 0xFFFFFFFF else 9


def tx_size(inputs: int, outputs: int) -> int:
    """Upper bound of the size of a signed P2PKH-only transaction."""
    return (
        4
        + _varint_len(inputs)
        + inputs * P2PKH_INPUT_BYTES
        + _varint_len(outputs)
        + outputs * P2PKH_OUTPUT_BYTES
        + 4
    )


def fee_for(size: int, rate: float) -> int:
    """Fee for `size` bytes at `rate` sat/kB, rounded up, never below 1 satoshi."""
    return max(1, math.ceil(size * rate / 1000))


@dataclass(frozen=True, slots=True)
class Selection:
    coins: tuple[Coin, ...]
    fee: int
    change: int  # 0: no change output (what is left over goes to the fee)


def _settle(chosen: list[Coin], amount: int, rate: float, outputs: int) -> Selection | None:
    total = sum(c.satoshis for c in chosen)
    fee = fee_for(tx_size(len(chosen), outputs + 1), rate)
    if total - amount - fee > 0:
        return Selection(tuple(chosen), fee, total - amount - fee)
    # Without a change output: a leftover smaller than a change output's
    # fee goes to the miner instead of making an output worth nothing.
    if total - amount >= fee_for(tx_size(len(chosen), outputs), rate):
        return Selection(tuple(chosen), total - amount, 0)
    return None


def select(
    coins: Iterable[Coin],
    amount: int,
    rate: float = DEFAULT_FEE_RATE,
    *,
    outputs: int = 1,
    first: Iterable[tuple[str, int]] = (),
) -> Selection:
    """Coins that pay `amount` (satoshis, over `outputs` outputs) plus the fee
    (`rate` sat/kB), as few as possible.

    One coin if any suffices (the smallest such: it leaves the big coins
    whole); otherwise the largest coins first, since the k largest are the
    fewest that can cover the sum. The spendable coins at the outpoints
    `first` are always spent (a payment that must conflict with an earlier
    one), with others added as needed.
    """
    if amount <= 0 or outputs < 1:
        raise ValueError("a payment must be worth at least 1 satoshi, in 1 output or more")
    forced = set(first)
    pool = sorted((c for c in coins if c.spendable), key=lambda c: c.satoshis)
    chosen: list[Coin] = [c for c in pool if c.outpoint in forced]
    pool = [c for c in pool if c.outpoint not in forced]
    if chosen:
        found = _settle(chosen, amount, rate, outputs)
        if found is not None:
            return found
    for coin in [] if chosen else pool:
        found = _settle([coin], amount, rate, outputs)
        if found is not None:
            return found
    available = sum(c.satoshis for c in chosen)
    for coin in reversed(pool):
        chosen.append(coin)
        found = _settle(chosen, amount, rate, outputs)
        if found is not None:
            return found
    available += sum(c.satoshis for c in pool)
    needed = amount + fee_for(tx_size(max(1, len(chosen)), outputs), rate)
    raise InsufficientFunds(needed, available)

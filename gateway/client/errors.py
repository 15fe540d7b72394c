"""What can go wrong when paying, as exceptions a caller can act on."""

from __future__ import annotations


class ClientError(Exception):
    """Base of every Farebox client error."""


class WalletError(ClientError):
    """The wallet file is missing, unreadable or inconsistent."""


class WalletNotFound(WalletError):
    def __init__(self, path: str) -> None:
        super().__init__(f"no wallet at {path}; create one with `farebox wallet new`")
        self.path = path


class InsufficientFunds(ClientError):
    def __init__(self, needed: int, available: int) -> None:
        super().__init__(
            f"the wallet has {available} spendable satoshis; this payment needs {needed} "
            "(price and fee); add coins with `farebox wallet fund`"
        )
        self.needed = needed
        self.available = available


class SpendingLimitExceeded(ClientError):
    """A price the session was told never to pay; nothing was spent.

    `kind` is "per-request" (price > limit) or "total" (spent + price > limit).
    """

    def __init__(self, kind: str, price: int, limit: int, spent: int, url: str) -> None:
        if kind == "per-request":
            text = f"{url} costs {price} satoshis; the limit per request is {limit}"
        else:
            text = (
                f"{url} costs {price} satoshis; {spent} already spent in this session "
                f"and the session limit is {limit}"
            )
        super().__init__(text + "; nothing was paid")
        self.kind = kind
        self.price = price
        self.limit = limit
        self.spent = spent
        self.url = url


class BadChallenge(ClientError):
    """A 402 that cannot be paid safely (missing or contradictory price or key)."""


class PaymentRefused(ClientError):
    """The gateway did not take the payment; the reserved coins are free again."""

    def __init__(self, reason: str, detail: str, *, status: int = 402, txid: str = "") -> None:
        super().__init__(f"payment refused ({reason}): {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status
        self.txid = txid


class PaymentNotSettled(ClientError):
    """Nobody can tell yet whether the payment went through.

    The transaction may be on the network, so its coins stay reserved in the
    wallet (pending) rather than being offered for another payment.
    """

    def __init__(self, reason: str, detail: str, *, txid: str) -> None:
        super().__init__(
            f"payment {txid} not settled ({reason}): {detail}; its coins stay reserved"
        )
        self.reason = reason
        self.detail = detail
        self.txid = txid

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
    """Not enough spendable coins; `set_aside` satoshis sit in coins a gateway refused."""

    def __init__(self, needed: int, available: int, *, set_aside: int = 0, why: str = "") -> None:
        text = (
            f"the wallet has {available} spendable satoshis; this payment needs {needed} "
            "(price and fee); add coins with `farebox wallet fund`"
        )
        if set_aside:
            text += (
                f". {set_aside} satoshis are in coins set aside ({why}); "
                "`farebox wallet coins` lists them"
            )
        super().__init__(text)
        self.needed = needed
        self.available = available
        self.set_aside = set_aside


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
    """The gateway said plainly it did not take the payment (a problem with a
    `reason`); the reserved coins are free again, or set aside if they were
    the cause. `problem` is the gateway's whole problem+json body."""

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        status: int = 402,
        txid: str = "",
        problem: dict[str, object] | None = None,
    ) -> None:
        super().__init__(f"payment refused ({reason}): {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status
        self.txid = txid
        self.problem = problem or {}


class OriginNotAllowed(ClientError):
    """A 402 came from an origin the caller did not name (after a redirect); nothing paid."""

    def __init__(self, asked: str, payee: str) -> None:
        super().__init__(
            f"{payee} asked for payment after a redirect from {asked}; not paid: "
            f"allow that origin (PayingSession(allow_origins=...), `farebox pay "
            f"--allow-origin {payee}`) to pay it"
        )
        self.asked = asked
        self.payee = payee


class ClockSkew(ClientError):
    """The gateway refused a grant only because it is not valid yet by the
    gateway's clock (`grant-not-yet-valid`): paying again would buy the same
    thing twice, so nothing is paid; the grant is kept."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(
            f"{url}: the gateway says the wallet's grant is not valid yet ({detail}); "
            "its servers' clocks disagree. Nothing was paid; the grant is kept: try again "
            "shortly, or tell the gateway's operator"
        )
        self.url = url
        self.detail = detail


class PaymentNotSettled(ClientError):
    """Nobody can tell yet whether the payment went through.

    The transaction may be on the network, so its coins stay reserved in the
    wallet (pending) rather than being offered for another payment.
    """

    def __init__(self, reason: str, detail: str, *, txid: str) -> None:
        super().__init__(
            f"payment {txid} not settled ({reason}): {detail}; its coins stay reserved and "
            "the next request for the same thing sends this same payment again, never a "
            "second one (`farebox wallet coins` lists it)"
        )
        self.reason = reason
        self.detail = detail
        self.txid = txid


class NotDelivered(ClientError):
    """No attempt to hand the payment over got as far as sending it (every
    connection failed): this attempt sent nothing."""

    def __init__(self, reason: str, detail: str, *, txid: str) -> None:
        super().__init__(f"payment {txid} not sent ({reason}): {detail}")
        self.reason = reason
        self.detail = detail
        self.txid = txid


class WalletBusy(WalletError):
    """Another process holds the wallet for paying out."""

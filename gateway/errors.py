"""Why a payment was refused, in a form a client can act on."""

from __future__ import annotations


class PaymentError(Exception):
    """A refused payment: `reason` is machine-readable; nothing was granted.

    402 when the payment is wellformed but not good enough (the client may pay
    again), 400 when the request itself is malformed, 413 when it is too big.

    `extra` are further members of the problem+json answer (RFC 9457 3.2),
    facts a client can act on: e.g. `height` and `merkle_root` of a block the
    chain does not know, so a wallet can tell which coin's proof failed.
    """

    def __init__(self, reason: str, detail: str, status: int = 402, **extra: int | str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.extra = extra

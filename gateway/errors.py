"""Why a payment was refused, in a form a client can act on."""

from __future__ import annotations


class PaymentError(Exception):
    """A refused payment: `reason` is machine-readable; nothing was granted.

    402 when the payment is wellformed but not good enough (the client may pay
    again), 400 when the request itself is malformed, 413 when it is too big.
    """

    def __init__(self, reason: str, detail: str, status: int = 402) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status

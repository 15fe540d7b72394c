"""Paying Farebox gateways: a file wallet, a paying HTTP session, `farebox wallet|pay`."""

from gateway.client.challenge import Challenge, TabTerms
from gateway.client.coins import Coin
from gateway.client.errors import (
    BadChallenge,
    ClientError,
    InsufficientFunds,
    PaymentNotSettled,
    PaymentRefused,
    SpendingLimitExceeded,
    WalletError,
    WalletNotFound,
)
from gateway.client.faucet import FaucetUnavailable, fund
from gateway.client.proofs import refresh_proofs
from gateway.client.records import Balance, PreparedPayment
from gateway.client.responses import FareboxResponse, Payment, TabBalance
from gateway.client.session import PayingSession
from gateway.client.tokens import StoredToken
from gateway.client.wallet import Wallet
from gateway.client.walletfile import default_path

__all__ = [
    "BadChallenge",
    "Balance",
    "Challenge",
    "ClientError",
    "Coin",
    "FareboxResponse",
    "FaucetUnavailable",
    "InsufficientFunds",
    "PayingSession",
    "Payment",
    "PaymentNotSettled",
    "PaymentRefused",
    "PreparedPayment",
    "SpendingLimitExceeded",
    "StoredToken",
    "TabBalance",
    "TabTerms",
    "Wallet",
    "WalletError",
    "WalletNotFound",
    "default_path",
    "fund",
    "refresh_proofs",
]

"""The parts a request handler may use, bundled once per worker (frozen).

Handlers — the pipeline, Farebox's own endpoints, the admin API — are given
this bundle instead of reaching through the Gateway. What a deployment leaves
out is None: `cashier` and `tokens` when no chain is configured (payments
off), `rates` without a fiat rate, `watcher` without a chain API to watch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.ledger.tally import Tally
from gateway.payments.admission import Revoked
from gateway.payments.cashier import Cashier
from gateway.payments.checkout import PaymentWatcher
from gateway.payouts.ledgerfile import FileLedger
from gateway.payouts.ledgerredis import RedisLedger
from gateway.peer.guard import Authenticator
from gateway.policy.reload import PolicyHolder
from gateway.pricing.rates import Rates
from gateway.store import Store
from gateway.store.leases import Direct, TabHolds
from gateway.tokens import Tokens


@dataclass(frozen=True, slots=True)
class Services:
    policy: PolicyHolder
    server_key: str  # compressed public key, hex: safe to show anyone
    tokens: Tokens | None = None
    cashier: Cashier | None = None
    store: Store | None = None
    revocations: Revoked | None = None  # pipeline/credentials.py's cached list
    rates: Rates | None = None
    watcher: PaymentWatcher | None = None
    tally: Tally | None = None
    cookie_secure: bool = True  # Set-Cookie with Secure (off only for plain-HTTP demos)
    wallet_url: str = "http://localhost:3321"  # the browser wallet the paywall offers
    peers: Authenticator | None = None  # BRC-103/104 authenticated clients
    x402_network: str = "bsv:mainnet"  # the CAIP-2 id x402 clients are asked to pay on
    # The payout ledger rewarded routes reserve and owe in (gateway/payouts:
    # SQLite with the memory store, the shared Redis otherwise); None: no rewards.
    payouts: FileLedger | RedisLedger | None = None
    payout_network: str | None = None  # "main"/"test": the addresses payouts accept; None: any
    treasury: Path | None = None  # the wallet file this gateway pays payouts from
    treasury_low_balance: int | None = None  # satoshis: below this the admin is warned
    # Metered requests' holds on tabs (store/leases.py): leased slices with a
    # shared store; by default, per request in `store`.
    tabs: TabHolds | None = None

    def __post_init__(self) -> None:
        if self.tabs is None and self.store is not None:
            object.__setattr__(self, "tabs", Direct(self.store))

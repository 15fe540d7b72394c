"""Settings -> the parts a worker runs: store, chain clients, rates, watcher, journal.

Commands (serve, demo, sweep) build their clients here, so each is opened one way."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any

from bsv import PrivateKey

from gateway import keys
from gateway.chain import Broadcaster, ChainTracker
from gateway.chain.arc import ArcBroadcaster
from gateway.chain.headers import BlockHeadersTracker, CachingTracker, DevnetTracker
from gateway.config import Settings
from gateway.edge import urls
from gateway.endpoints.routes import Route, table
from gateway.ledger.journal import Journal
from gateway.payments.checkout import PaymentWatcher
from gateway.pipeline.auth_request import authorize
from gateway.pipeline.gateway import Gateway
from gateway.policy import PolicyError
from gateway.policy.reload import PolicyHolder
from gateway.pricing.rates import FeedRates, FixedRates, Rates
from gateway.proxy.forward import Proxy
from gateway.services import Services
from gateway.store import Store
from gateway.store.leases import Direct, Leases, TabHolds
from gateway.store.memory import MemoryStore
from gateway.tokens import KeyRing, Tokens

log = logging.getLogger("farebox")


@dataclass
class Startup:
    """What start-up loaded and checked once, before any worker runs."""

    holder: PolicyHolder
    identity: PrivateKey
    tokens: Tokens


def open_journal(settings: Settings) -> Journal | None:
    if settings.receipts_file is None:  # turned off on purpose (the demo's coins are worthless)
        return None
    try:
        return Journal(settings.receipts_file)
    except OSError as exc:
        raise SystemExit(
            f"farebox: cannot open receipts file {settings.receipts_file}: {exc.strerror}"
        ) from None


def open_broadcaster(settings: Settings, *, callbacks: bool = True) -> ArcBroadcaster | None:
    """The broadcaster the settings name: the devnet's ARC API, or ARC; None without either.

    `callbacks=False` leaves out ARC's status callbacks (a sweep wants none).
    """
    if settings.devnet_url:
        return ArcBroadcaster(settings.devnet_url)
    if not settings.arc_url:
        return None
    return ArcBroadcaster(
        settings.arc_url,
        api_key=settings.arc_api_key,
        wait_for=settings.arc_wait_for,
        callback_url=settings.arc_callback_url if callbacks else None,
        callback_token=settings.arc_callback_token if callbacks else None,
    )


def chain_clients(
    settings: Settings, closers: list[Callable[[], Awaitable[None]]]
) -> tuple[ChainTracker, Broadcaster]:
    """The chain tracker (cached) and broadcaster a worker takes payments with."""
    if settings.devnet_url:
        inner: ChainTracker = DevnetTracker(settings.devnet_url)
    else:
        assert settings.headers_url
        inner = BlockHeadersTracker(settings.headers_url, api_key=settings.headers_api_key)
    broadcaster = open_broadcaster(settings)
    assert broadcaster is not None, "settings with payments name a devnet or ARC"
    tracker = CachingTracker(inner)
    closers += [tracker.close, broadcaster.close]
    return tracker, broadcaster


def open_watcher(
    settings: Settings, closers: list[Callable[[], Awaitable[None]]]
) -> PaymentWatcher | None:
    from gateway.chain.watch import WocWatcher

    url = settings.watch_url or settings.devnet_url
    if not url:
        return None
    watcher = WocWatcher(url, network=settings.watch_network, api_key=settings.watch_api_key)
    closers.append(watcher.close)
    return watcher


def open_rates(settings: Settings, closers: list[Callable[[], Awaitable[None]]]) -> Rates | None:
    if settings.rate_feed:
        feed = FeedRates(settings.rate_feed, max_age=settings.rate_max_age)
        closers.append(feed.close)
        return feed
    fixed = {
        currency: Decimal(str(value))
        for currency, value in (("USD", settings.rate_usd), ("EUR", settings.rate_eur))
        if value
    }
    return FixedRates(fixed) if fixed else None


def has_rewards(holder: PolicyHolder) -> bool:
    return any(
        r.route.reward is not None for service in holder.current.services for r in service.routes
    )


async def open_payouts(
    settings: Settings,
    store: Store,
    holder: PolicyHolder,
    closers: list[Callable[[], Awaitable[None]]],
) -> Any:
    """The payout ledger rewards are recorded in, or None when the policy has no
    reward route and this gateway holds no treasury: the shared Redis store's
    when there is one, else SQLite at `payouts_ledger` (shared by this
    machine's workers)."""
    if settings.payouts_wallet is None and not has_rewards(holder):
        return None
    from gateway.store.redis import RedisStore

    if isinstance(store, RedisStore):
        from gateway.payouts.ledgerredis import RedisLedger

        return await RedisLedger.open(store)
    from gateway.payouts.ledgerfile import LedgerError, open_ledger

    try:
        ledger = open_ledger(settings.payouts_ledger, exclusive=False)
    except LedgerError as exc:
        raise SystemExit(f"farebox: payouts_ledger: {exc}") from None
    closers.append(ledger.close)
    return ledger


def payout_network(settings: Settings) -> str | None:
    """The network payout addresses must be of: any on a devnet."""
    return None if settings.devnet_url else settings.watch_network


def open_store(settings: Settings) -> Store:
    if not settings.shared_store:
        return MemoryStore()
    from gateway.store.redis import RedisStore

    return RedisStore.from_url(
        settings.store,
        prefix=settings.store_prefix,
        pool_size=settings.store_pool_size,
        timeout=settings.store_timeout,
    )


def open_tabs(store: Store) -> TabHolds:
    """Metered requests' holds: leased slices on a shared store, per request in memory."""
    return Direct(store) if isinstance(store, MemoryStore) else Leases(store)  # type: ignore[arg-type]


def prepare(settings: Settings) -> Startup:
    """Everything that can fail at start-up, checked once, before any worker."""
    import bsv

    if not bsv.native_status().get("available"):
        raise SystemExit(
            "farebox: bsv-sdk was installed without its native extension (libsecp256k1)"
        )
    if settings.workers > 1 and settings.payments_enabled and not settings.shared_store:
        # Claims in each worker's memory: two workers could each accept one payment.
        raise SystemExit(
            "farebox: --workers above 1 with payments needs a shared store (--store redis://...)"
        )
    try:
        identity = keys.load(settings.key_file)
    except keys.KeyFileError as exc:
        raise SystemExit(f"farebox: {exc}") from None
    try:
        holder = PolicyHolder.load(settings.policies)
    except PolicyError as exc:
        raise SystemExit(f"farebox: invalid policy, not starting:\n{exc}") from None
    try:
        tokens = Tokens(KeyRing.load(settings.token_keys))
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"farebox: cannot load token signing keys from {settings.token_keys}: {exc}"
        ) from None
    return Startup(holder, identity, tokens)


def assemble_gateway(services: Services, proxy: Proxy) -> Gateway:
    """The public listener's handler: the pipeline, with Farebox's own URLs routed.

    The route table (endpoints/) is handed to the pipeline here, so the
    pipeline never imports the endpoints; the nginx auth_request endpoint
    is the one route that needs the gateway itself.
    """
    gateway = Gateway(services, proxy)
    gateway.router = table(services, Route(urls.AUTH, ("*",), partial(authorize, gateway)))
    return gateway

"""One worker: its event loop, the public and admin listeners, reloads, a clean drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.chain import Broadcaster, ChainTracker
from gateway.config import Settings
from gateway.edge import logs, metrics
from gateway.edge.forwarded import networks
from gateway.edge.protocol import ProblemServer
from gateway.endpoints import admin
from gateway.endpoints.checkout import watch_late
from gateway.ledger.tally import Tally
from gateway.payments.cashier import Cashier
from gateway.payments.checkout import CheckoutWatcher, PaymentWatcher
from gateway.payouts.runner import PayoutRunner
from gateway.peer.guard import Authenticator
from gateway.pipeline.credentials import Revocations
from gateway.pipeline.gateway import MAX_HEADER_BYTES
from gateway.policy import Match
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import (
    Startup,
    assemble_gateway,
    chain_clients,
    open_broadcaster,
    open_journal,
    open_payouts,
    open_rates,
    open_store,
    open_tabs,
    open_watcher,
    payout_network,
)
from gateway.services import Services
from gateway.store import Store, StoreUnavailable
from gateway.store.receipts import Receipt

log = logging.getLogger("farebox")


def _tune_gc() -> None:
    # Start-up leaves ~50k long-lived objects (pydantic, bsv-sdk, aiohttp) that
    # every full collection would walk again: ~40 ms pauses that set the p99.
    # Freeze them out of the collector and collect the young generation less
    # often; request garbage is mostly freed by reference counting anyway.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


def configure_logging(level: str, fmt: str = "text") -> None:
    logs.configure(level, fmt)


def access_logger() -> logging.Logger:
    """The access log's logger, at INFO whatever `--log-level` says: asking
    for `--access-log` asks for its lines (`--log-level warning` alone would
    silence them, and the answers would still pay for the asking)."""
    logger = logging.getLogger("farebox.access")
    logger.setLevel(logging.INFO)
    return logger


def open_peers(settings: Settings, startup: Startup, store: Store) -> Authenticator | None:
    """BRC-103/104 for authenticated clients, where replays can be refused.

    A request nonce is remembered in the store; with several workers on the
    memory store each worker would remember its own, and a signed request
    could be served once per worker: then authenticated clients are off.
    """
    if settings.workers > 1 and not settings.shared_store:
        return None  # said once at start-up (serve/supervisor.py)
    return Authenticator(
        startup.identity, store, lifetime=int(settings.auth_session), limit=settings.auth_body_limit
    )


async def run_worker(
    settings: Settings,
    startup: Startup,
    *,
    chain: tuple[ChainTracker, Broadcaster] | None = None,
    watcher: PaymentWatcher | None = None,
    reuse_port: bool = False,
    ready: Callable[[int], Awaitable[None] | None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight requests and stop.

    `chain` and `watcher` replace what the settings would open (the demo
    and tests pass an in-process devnet)."""
    holder = startup.holder
    proxy = Proxy(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        connections=settings.upstream_connections,
    )
    await proxy.start()
    closers: list[Callable[[], Awaitable[None]]] = [proxy.close]
    if chain is None and settings.payments_enabled:
        chain = chain_clients(settings, closers)
    store = open_store(settings)
    tabs = open_tabs(store)
    closers += [tabs.close, store.close]  # the leases go back while the store answers
    try:
        await store.ping()
        store_down = None
    except StoreUnavailable as exc:
        store_down = exc
    tally = Tally(store)

    journal = open_journal(settings) if settings.payments_enabled or chain else None

    def paid(match: Match, receipt: Receipt) -> None:
        tally.add(match.service.name, match.route.scope, payments=1, satoshis=receipt.satoshis)
        if journal is not None:
            journal.append(receipt)

    cashier = None
    if chain is not None:
        cashier = Cashier(
            startup.identity,
            on_accepted=paid,
            tracker=chain[0],
            broadcaster=chain[1],
            store=store,
            tokens=startup.tokens,
            time_window=settings.payment_window,
        )
    payments_watcher = watcher
    if payments_watcher is None and cashier is not None:
        payments_watcher = open_watcher(settings, closers)
    late = None
    if payments_watcher is not None and cashier is not None:
        # Keeps looking for checkout payments past expiry (closed with the watcher).
        late = CheckoutWatcher(payments_watcher, store, grace=settings.checkout_grace)
    payouts = await open_payouts(settings, store, holder, closers)
    runner_task = None
    if payouts is not None and settings.payouts_wallet is not None:
        if chain is not None:
            broadcaster = chain[1]
        else:
            opened = open_broadcaster(settings)
            assert opened is not None, "settings with a payouts wallet name a chain"
            closers.append(opened.close)
            broadcaster = opened
        payout_runner = PayoutRunner(
            payouts,
            settings.payouts_wallet,
            broadcaster,
            interval=settings.payouts_interval,
            batch_size=settings.payouts_batch,
            low_balance=settings.payouts_low_balance,
        )
        runner_task = asyncio.ensure_future(payout_runner.run())
    proxy.own_token = startup.tokens.issued_here
    proxy.trusted = networks(settings.trusted_proxies)
    services = Services(
        holder,
        startup.identity.public_key().hex(),
        tokens=startup.tokens,
        cashier=cashier,
        cookie_secure=settings.cookie_secure,
        store=store,
        revocations=Revocations(store),
        rates=open_rates(settings, closers),
        watcher=late or payments_watcher,
        wallet_url=settings.wallet_url,
        tally=tally,
        peers=open_peers(settings, startup, store),
        x402_network=settings.x402_network,
        payouts=payouts,
        payout_network=payout_network(settings),
        treasury=settings.payouts_wallet if payouts is not None else None,
        treasury_low_balance=settings.payouts_low_balance,
        tabs=tabs,
    )
    gateway = assemble_gateway(services, proxy)
    if store_down is not None:
        # Not fatal (it may come up later: the gateway recovers by itself),
        # but priced requests get 503 until it does: say so at start-up.
        gateway.store_failed()
        log.warning(
            "the store does not answer (%s): free routes are served, priced ones get 503 "
            "store-unavailable until it does",
            store_down,
        )
    server = ProblemServer(
        gateway.handle,
        lane=gateway.takes,
        quick=gateway.quick,
        access_log=access_logger() if settings.access_log else None,
        access_log_class=logs.AccessLog,
        # BRC-121 carries the payment's BEEF in a header: allow ~48 kB of it.
        max_field_size=MAX_HEADER_BYTES,
    )
    runner = web.ServerRunner(server, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port, backlog=1024)
    admin_runner = None
    try:
        await site.start()
        admin_runner = await _start_admin(settings, services, reuse_port)
    except OSError as exc:
        # One line, as `farebox demo` says it, and nothing left open behind it
        # (an unclosed client session, a payout runner still running).
        where = getattr(exc, "listening", f"{settings.host}:{settings.port}")
        await runner.cleanup()
        if runner_task is not None:
            runner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner_task
        for close in closers:
            await close()
        raise SystemExit(
            f"farebox: cannot listen on {where}: {os.strerror(exc.errno) if exc.errno else exc}"
        ) from None
    port = runner.addresses[0][1]
    tallying = asyncio.ensure_future(tally.run())
    counting = asyncio.ensure_future(metrics.flushing())
    watching_late = asyncio.ensure_future(watch_late(services, late)) if late else None
    _tune_gc()
    log.info(
        "listening on http://%s:%d, policy version %s, payments %s",
        settings.host,
        port,
        holder.current.version,
        "on" if cashier else "off (no chain configured)",
    )
    if ready is not None:
        result = ready(port)
        if asyncio.iscoroutine(result):
            await result

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reread() -> None:
        holder.reload()
        try:
            kid = startup.tokens.reload(settings.token_keys)
            log.info("token keys reloaded from %s, signing with %s", settings.token_keys, kid)
        except (OSError, ValueError) as exc:
            log.error("token keys not reloaded, keeping the current ring: %s", exc)

    loop.add_signal_handler(signal.SIGHUP, reread)
    watcher = asyncio.ensure_future(holder.watch()) if settings.watch else None
    try:
        await stop.wait()
    finally:
        log.info("shutting down: draining in-flight requests")
        for task in (watcher, watching_late, runner_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await runner.cleanup()
        if admin_runner is not None:
            await admin_runner.cleanup()
        for counter in (tallying, counting):
            counter.cancel()  # flushes what it counted
            with contextlib.suppress(asyncio.CancelledError):
                await counter
        for close in closers:
            await close()


async def _start_admin(
    settings: Settings, services: Services, reuse_port: bool
) -> web.AppRunner | None:
    """The admin API on its own listener, when an admin token is configured."""
    token = admin.load_token(settings.admin_token, settings.admin_token_file)
    if token is None:
        log.info("admin API off (no admin token configured)")
        return None
    runner = web.AppRunner(admin.app(services, token, metrics.handler), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.admin_host, settings.admin_port, reuse_port=reuse_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        exc.listening = f"{settings.admin_host}:{settings.admin_port} (admin API)"  # type: ignore[attr-defined]
        raise
    log.info("admin API on http://%s:%d", settings.admin_host, runner.addresses[0][1])
    return runner

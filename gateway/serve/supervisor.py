"""Many workers on one port (SO_REUSEPORT): start them, pass signals on, replace the dead."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time

import uvloop

from gateway.config import Settings
from gateway.edge import metrics
from gateway.serve.assemble import prepare
from gateway.serve.worker import configure_logging, run_worker

log = logging.getLogger("farebox")


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    startup = prepare(settings)
    if settings.workers == 1:
        uvloop.run(run_worker(settings, startup))
        return
    _can_listen(settings)  # else every worker would fail at start, again and again
    _supervise(settings)


def _can_listen(settings: Settings) -> None:
    """Refuse, in one line, a port the workers could not share (SO_REUSEPORT):
    the gateway's, and the admin API's when it is on."""
    wanted = [(settings.host, settings.port, "")]
    if settings.admin_token or settings.admin_token_file:
        wanted.append((settings.admin_host, settings.admin_port, " (admin API)"))
    for host, port, what in wanted:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise SystemExit(
                    f"farebox: cannot listen on {host}:{port}{what}: {exc.strerror}"
                ) from None


def _worker_main(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    uvloop.run(run_worker(settings, prepare(settings), reuse_port=True))


def _supervise(settings: Settings) -> None:
    """Run N workers on one port; pass signals on; replace a worker that dies."""
    ctx = multiprocessing.get_context("spawn")
    workers: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = False

    def start_one() -> None:
        proc = ctx.Process(target=_worker_main, args=(settings,), daemon=False)
        proc.start()
        assert proc.pid is not None
        workers[proc.pid] = proc

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for proc in workers.values():
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    if not os.environ.get(metrics.MULTIPROC_ENV):
        # Workers write their samples here; any worker's /metrics sums them.
        os.environ[metrics.MULTIPROC_ENV] = tempfile.mkdtemp(prefix="farebox-metrics-")
    for _ in range(settings.workers):
        start_one()
    log.info("supervising %d workers", settings.workers)
    if not settings.shared_store:
        log.warning(
            "authenticated clients (BRC-103, AuthFetch) are off: with %d workers, a replayed "
            "request can only be refused on a shared store (--store redis://...)",
            settings.workers,
        )
    restarts: list[float] = []
    while workers:
        for pid, proc in list(workers.items()):
            if proc.is_alive():
                continue
            del workers[pid]
            metrics.mark_dead(pid)
            if stopping:
                continue
            log.error("worker %d exited with code %s; starting another", pid, proc.exitcode)
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > 5 * settings.workers:
                log.critical("workers keep dying; giving up")
                stopping = True
                forward(signal.SIGTERM, None)
                continue
            start_one()
        time.sleep(0.2)
    if restarts and stopping and len(restarts) > 5 * settings.workers:
        raise SystemExit(1)

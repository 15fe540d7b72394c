"""Prometheus metrics, served at /metrics on the admin listener.

prometheus-client keeps the counters; the one every request updates
(answers and their durations) is counted here first and handed over once a
second (`answered`, `flush`). With `--workers N` each worker writes
its samples to a shared directory (prometheus-client's multiprocess mode,
set up by the supervisor before workers start) and any worker's /metrics
answers for all of them.

Labels are bounded: services and route patterns come from the policy,
statuses and reasons from fixed sets; never a path, a client or a txid.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

REQUESTS = Counter(
    "farebox_requests_total",
    "Requests answered, by service, route pattern and status",
    ["service", "route", "status"],
)
LATENCY = Histogram(
    "farebox_request_duration_seconds",
    "Time to answer a request (to the end of a streamed body), by service",
    ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PAYMENTS = Counter(
    "farebox_payments_total",
    "Payments taken, and refused by reason",
    ["service", "result", "reason"],
)
SATOSHIS = Counter("farebox_satoshis_total", "Satoshis received, by service", ["service"])
METERED = Counter(
    "farebox_metered_millisatoshis_total", "Charged from tabs (msat), by service", ["service"]
)
UPSTREAM_ERRORS = Counter(
    "farebox_upstream_errors_total", "Upstream failures, by service and kind", ["service", "kind"]
)
STORE_ERRORS = Counter("farebox_store_errors_total", "Calls that found the store unavailable")
RELOADS = Counter("farebox_policy_reloads_total", "Policy reloads, by result", ["result"])
REWARDS = Counter(
    "farebox_rewards_total",
    "Rewarded requests, by campaign and outcome (owed, again, exhausted, refused-upstream)",
    ["campaign", "outcome"],
)
PAYOUTS = Counter(
    "farebox_payouts_total",
    "Payouts broadcast, by campaign and status (sent, refused)",
    ["campaign", "status"],
)
TREASURY = Gauge(
    "farebox_treasury_satoshis",
    "Spendable satoshis in the payout treasury (as its engine saw it last)",
    multiprocess_mode="max",
)
PAYOUT_SATOSHIS = Counter(
    "farebox_payout_satoshis_total", "Satoshis paid out (broadcast), by campaign", ["campaign"]
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Answers are counted here and handed to prometheus-client once a second
# (`flush`, and before /metrics answers): its inc() and observe() take a lock
# each and, with several workers, write an mmap'd file: a few microseconds a
# request, as much as a known 402 costs otherwise. Here it is a dict lookup,
# a bisect and three adds. Another worker's answers show within a second.
FLUSH_EVERY = 1.0  # seconds
_BOUNDS = LATENCY._upper_bounds  # the buckets' `le`, +Inf last
# (service, route, status) -> [answers, seconds in all, per-bucket answers...]
_pending: dict[tuple[str, str, int], list[Any]] = {}
_metered: dict[str, int] = {}  # msat charged per service since the last flush


def answered(service: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and its duration (the per-request hot path)."""
    counts = _pending.get((service, route, status))
    if counts is None:
        counts = _pending[(service, route, status)] = [0, 0.0] + [0] * len(_BOUNDS)
    counts[0] += 1
    counts[1] += seconds
    counts[2 + bisect_left(_BOUNDS, seconds)] += 1  # the first bound >= seconds


def metered(service: str, msat: int) -> None:
    """Count msat charged from a tab (the metered hot path; flushed as `answered`)."""
    _metered[service] = _metered.get(service, 0) + msat


def flush() -> None:
    """Hand the answers counted since the last flush to prometheus-client."""
    global _pending, _metered
    pending, _pending = _pending, {}
    charged, _metered = _metered, {}
    for service, msat in charged.items():
        METERED.labels(service).inc(msat)
    for (service, route, status), counts in pending.items():
        REQUESTS.labels(service, route, str(status)).inc(counts[0])
        latency = LATENCY.labels(service)
        # Histogram.observe() one answer at a time, n at a time: its sum and
        # its (non-cumulative) bucket values, as observe() adds to them.
        latency._sum.inc(counts[1])
        for bucket, n in zip(latency._buckets, counts[2:], strict=True):
            if n:
                bucket.inc(n)


async def flushing(every: float = FLUSH_EVERY) -> None:
    """Flush every `every` seconds until cancelled, then once more."""
    try:
        while True:
            await asyncio.sleep(every)
            flush()
    finally:
        flush()


def exposition() -> bytes:
    flush()  # this worker's, at least, to the moment
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


async def handler(request: web.Request) -> web.Response:
    response = web.Response(body=exposition())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def mark_dead(pid: int) -> None:
    """Tell multiprocess mode a worker is gone (its live gauges no longer count)."""
    if os.environ.get(MULTIPROC_ENV):
        _multiprocess.mark_process_dead(pid)

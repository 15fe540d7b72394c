"""One error mapping for the public listener: every failure as problem+json.

Code below raises values — PaymentError (refused, or not processed now),
ChainError (the chain services did not answer), StoreUnavailable (money
rule 4: priced work fails closed), RateUnavailable (no fresh exchange rate),
PathError (a request target with no one normal form) — and this turns each
into its RFC 9457 answer. A 503 always says when to retry. Anything else is
a bug: logged with its traceback, answered as a problem, never plain text.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.chain import ChainError
from gateway.edge import metrics
from gateway.edge.hosts import HostError
from gateway.edge.paths import PathError
from gateway.edge.problems import problem
from gateway.errors import PaymentError
from gateway.pricing.rates import RateUnavailable
from gateway.store import StoreUnavailable

log = logging.getLogger("farebox")

RETRY_AFTER = {"store-unavailable": "5", "price-unavailable": "30"}
DEFAULT_RETRY = "10"  # seconds: chain services, a pending broadcast


def problem_for(exc: BaseException) -> web.Response:
    """The answer for an error raised while handling a request."""
    if isinstance(exc, PaymentError):
        title = {402: "Payment refused", 400: "Bad payment", 413: "Payment too large"}.get(
            exc.status, "Payment not processed"
        )
        return _problem(exc.status, exc.reason, title, exc.detail, **exc.extra)
    if isinstance(exc, ChainError):
        return _problem(
            503,
            "chain-unavailable",
            "Temporarily unavailable",
            f"the chain services did not answer ({exc.kind}); send the same payment again shortly",
        )
    if isinstance(exc, StoreUnavailable):
        metrics.STORE_ERRORS.inc()
        return _problem(
            503,
            "store-unavailable",
            "Temporarily unavailable",
            "priced resources are paused while the gateway's store is unreachable",
        )
    if isinstance(exc, RateUnavailable):
        return _problem(503, "price-unavailable", "Price unavailable", str(exc))
    if isinstance(exc, PathError):
        return _problem(400, exc.reason, "Bad request target", exc.detail)
    if isinstance(exc, HostError):
        return _problem(400, exc.reason, "Bad Host header", exc.detail)
    if isinstance(exc, web.HTTPException):  # aiohttp's own refusals (body too large, ...)
        reason = exc.reason.lower().replace(" ", "-")
        return _problem(exc.status, reason, exc.reason, exc.text or "")
    log.exception("unexpected error while handling a request", exc_info=exc)
    return problem(
        500, "internal-error", "Internal error", "the gateway failed; nothing was charged"
    )


def _problem(status: int, reason: str, title: str, detail: str, **extra: int | str) -> web.Response:
    headers = None
    if status == 503:
        headers = {
            "Retry-After": RETRY_AFTER.get(reason, DEFAULT_RETRY),
            "Cache-Control": "no-store",
        }
    return problem(status, reason, title, detail, headers=headers, **extra)

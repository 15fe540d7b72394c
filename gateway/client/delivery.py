"""Handing a signed payment to the gateway, and sending the same one again.

Two ways: BRC-121 headers on a retry of the request itself, or a POST to the
gateway's pay endpoint (no header size limit there). The rule for both:
only an answer that carries the grant (the token) settles a payment, and
only a definite refusal (a problem+json answer with a `reason` that is not
"not now", or a request a proxy refused before anyone read it) frees it.
Anything else — a 5xx, a timeout, a dropped connection, a 402 without a
reason, an answer without a token — may hide a payment the gateway took, so
the very same payment is sent again, up to `retries` times (the gateway
answers a resent payment with the same grant); then PaymentNotSettled, and
the wallet keeps it pending for the next request for the same thing.
A refusal raises PaymentRefused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.client.challenge import problem_of
from gateway.client.errors import NotDelivered, PaymentNotSettled, PaymentRefused
from gateway.client.grants import bearer
from gateway.client.records import PreparedPayment
from gateway.client.responses import FareboxResponse, json_object, send
from gateway.client.tokens import StoredToken, read_token

T = TypeVar("T")

TOKEN_HEADER = "X-Farebox-Token"
DEFAULT_HEADER_LIMIT = 6 * 1024  # base64 characters of x-bsv-beef; proxies cap headers at 8 KB
# The gateway's answers that mean "not now, send the same payment again".
RETRYABLE = frozenset(
    {"chain-unavailable", "broadcast-pending", "payment-in-progress", "store-unavailable"}
)
# Refused by a proxy (or aiohttp) before the request was read: nothing was taken.
_UNREAD = frozenset({400, 413, 414, 431})


class Outcome(Enum):
    ACCEPTED = "accepted"  # the answer carries the grant
    REFUSED = "refused"  # the gateway said plainly it did not take it
    UNKNOWN = "unknown"  # it may have: send the same payment again


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: str = ""
    detail: str = ""
    problem: dict[str, Any] | None = None
    status: int = 0


class Courier:
    """Delivers prepared payments over a session's HTTP client, resending on "not now"."""

    def __init__(
        self,
        client: Callable[[], aiohttp.ClientSession],
        *,
        header_limit: int = DEFAULT_HEADER_LIMIT,
        use_pay_endpoint: bool = False,
        retries: int = 3,
        retry_delay: float = 0.5,
    ) -> None:
        """`client` gives the open HTTP client (RuntimeError if there is none);
        the rest as `PayingSession` takes them (`retry_delay` in seconds)."""
        self._client = client
        self.header_limit = header_limit
        self.use_pay_endpoint = use_pay_endpoint
        self.retries = retries
        self.retry_delay = retry_delay

    async def deliver(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        kwargs: dict[str, Any],
        pay_path: str,
        prepared: PreparedPayment,
        tab: StoredToken | None,
        *,
        resent: bool = False,
    ) -> tuple[FareboxResponse | None, str | None, str]:
        """Pay for `method` `url` with `prepared` (into `tab`, if given): in headers if its
        BEEF fits `header_limit`, else at the pay endpoint on `pay_path`.

        Only the first send of a payment rides on the request itself: one
        that may have been taken already (`resent`, or its answer lost) goes
        to the pay endpoint, which hands over the grant without asking the
        upstream, so a lost answer never makes the request (a metered POST,
        say) run again and again.

        Returns the request's answer (None from the pay endpoint: the request
        is still to be made), the token issued, if any, and the way taken:
        "headers" or "pay-endpoint".
        """
        encoded = base64.b64encode(prepared.beef).decode()
        if not resent and not self.use_pay_endpoint and len(encoded) <= self.header_limit:
            # With the tab's token the gateway tops that tab up.
            paying = bearer(headers, tab)
            try:
                resp, token = await self.in_headers(method, url, paying, kwargs, prepared)
                return resp, token, "headers"
            except PaymentNotSettled:
                pass  # perhaps taken: ask for its grant without repeating the request
        answer = await self.to_endpoint(method, url, pay_path, prepared, tab)
        return None, token_in(answer), "pay-endpoint"

    async def in_headers(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        kwargs: dict[str, Any],
        prepared: PreparedPayment,
    ) -> tuple[FareboxResponse, str | None]:
        """BRC-121: the same request again, the payment in its headers.

        Returns the answer (unreleased) and the token it carried, if any.
        """
        paying = headers.copy()
        paying.update(
            {
                "x-bsv-beef": base64.b64encode(prepared.beef).decode(),
                "x-bsv-sender": prepared.sender,
                "x-bsv-nonce": prepared.prefix,
                "x-bsv-time": prepared.time_ms,
                "x-bsv-vout": str(prepared.vout),
            }
        )

        async def attempt() -> tuple[Verdict, tuple[FareboxResponse, str | None] | None]:
            resp = await send(self._client(), method, url, paying, kwargs, allow_redirects=False)
            token = paid_for(resp.headers.getall(TOKEN_HEADER, ()), prepared.txid)
            verdict = await _verdict(resp, token)
            if verdict.outcome is Outcome.ACCEPTED:
                return verdict, (resp, token)
            resp.release()
            return verdict, None

        # A "not now" answer (the gateway did not ask the upstream) is sent
        # again here; anything less definite goes to the pay endpoint.
        return await self._until_settled(attempt, prepared, only_not_now=True)

    async def to_endpoint(
        self,
        method: str,
        url: URL,
        pay_path: str,
        prepared: PreparedPayment,
        tab: StoredToken | None = None,
    ) -> dict[str, Any]:
        """POST the payment for `method` `url` to the pay endpoint at `pay_path` on
        `url`'s origin; returns the answer's JSON object.

        With `tab` (its token) the payment tops up that tab.
        """
        body: dict[str, Any] = {
            "beef": base64.b64encode(prepared.beef).decode(),
            "sender": prepared.sender,
            "nonce": prepared.prefix,
            "time": prepared.time_ms,
            "vout": prepared.vout,
            "method": method,
            "url": url.raw_path_qs,
        }
        if tab is not None:
            body["tab"] = tab.token
        # Only a path is taken from the 402: a payment never leaves this origin.
        pay_url = url.origin().join(URL(pay_path))
        if pay_url.origin() != url.origin():
            raise NotDelivered("foreign-pay-url", f"{pay_path} is not on {url.origin()}", txid="")

        async def attempt() -> tuple[Verdict, dict[str, Any] | None]:
            async with self._client().post(pay_url, json=body, allow_redirects=False) as resp:
                answer: dict[str, Any] = {}
                if resp.status == 200:
                    with contextlib.suppress(ValueError, aiohttp.ContentTypeError):
                        answer = json_object(await resp.json(content_type=None))
                verdict = await _verdict(resp, paid_for([token_in(answer) or ""], prepared.txid))
                return verdict, answer if verdict.outcome is Outcome.ACCEPTED else None

        return await self._until_settled(attempt, prepared)

    async def _until_settled(
        self,
        attempt: Callable[[], Awaitable[tuple[Verdict, T | None]]],
        prepared: PreparedPayment,
        *,
        only_not_now: bool = False,
    ) -> T:
        """`attempt()` until the payment is accepted (its result) or refused
        (PaymentRefused), at most `retries` times more; then PaymentNotSettled.

        A connection never made is retried too; if no attempt got as far as
        sending, NotDelivered: nothing left in this call (the caller knows
        whether it had been handed over before).
        """
        reason, detail = "", ""
        reached = False
        for number in range(self.retries + 1):
            if number:
                await asyncio.sleep(self.retry_delay)
            try:
                verdict, result = await attempt()
            except aiohttp.ClientConnectorError as exc:
                reason, detail = "connection-failed", f"{type(exc).__name__}: {exc}"
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                reached = True  # it may have arrived
                reason, detail = "connection-lost", f"{type(exc).__name__}: {exc}"
                if only_not_now:
                    break
                continue
            reached = True
            if verdict.outcome is Outcome.ACCEPTED and result is not None:
                return result
            if verdict.outcome is Outcome.REFUSED:
                raise PaymentRefused(
                    verdict.reason,
                    verdict.detail,
                    status=verdict.status,
                    txid=prepared.txid,
                    problem=verdict.problem,
                )
            reason, detail = verdict.reason, verdict.detail
            if only_not_now and reason not in RETRYABLE:
                break  # perhaps taken, and the request perhaps run: not again here
        if not reached:
            raise NotDelivered(reason, detail, txid=prepared.txid)
        raise PaymentNotSettled(reason, detail, txid=prepared.txid)


def paid_for(tokens: Iterable[str], txid: str) -> str | None:
    """The token among `tokens` that the payment `txid` bought, None if none did.

    A token for anything else (a stale one, or one an upstream forged on the
    way) proves nothing about this payment: it is never taken as its grant.
    """
    for token in tokens:
        stored = read_token("", token) if token else None
        if stored is not None and stored.txid == txid:
            return token
    return None


def token_in(answer: dict[str, Any]) -> str | None:
    """The token in a pay endpoint's answer, None if it gave none."""
    token = answer.get("token")
    return token if isinstance(token, str) else None


async def _verdict(resp: aiohttp.ClientResponse, token: str | None) -> Verdict:
    """Did the gateway take the payment that came with this request?"""
    if token:
        return Verdict(Outcome.ACCEPTED)
    problem = await problem_of(resp) if resp.status >= 400 else None
    reason = problem.get("reason") if problem is not None else None
    if isinstance(reason, str) and reason:
        detail = str(problem.get("detail") or "") if problem is not None else ""
        if reason in RETRYABLE or resp.status >= 500:
            return Verdict(Outcome.UNKNOWN, reason, detail)
        return Verdict(Outcome.REFUSED, reason, detail, problem, resp.status)
    if resp.status in _UNREAD:
        # e.g. aiohttp's plain-text 400 for a header over 8190 bytes
        return Verdict(Outcome.REFUSED, f"http-{resp.status}", resp.reason or "", None, resp.status)
    # A 5xx from a proxy, a 402 that says nothing, an answer without the
    # token: the payment may have been taken. Send it again.
    return Verdict(Outcome.UNKNOWN, f"http-{resp.status}", resp.reason or "no grant in the answer")

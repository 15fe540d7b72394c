"""Handing a signed payment to the gateway, and sending the same one again.

Two ways: BRC-121 headers on a retry of the request itself, or a POST to the
gateway's pay endpoint (no header size limit there). Either way, an answer
that means "not now" (a `RETRYABLE` reason; at the pay endpoint also a 5xx
without a problem body) gets the very same payment again, up to `retries`
times; a refusal raises
PaymentRefused, and no definite answer PaymentNotSettled (the coins stay
reserved: the gateway may yet have taken it).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from enum import Enum
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.client.challenge import problem_of
from gateway.client.errors import PaymentNotSettled, PaymentRefused
from gateway.client.grants import bearer
from gateway.client.responses import FareboxResponse, json_object, send
from gateway.client.tokens import StoredToken
from gateway.client.wallet import PreparedPayment

TOKEN_HEADER = "X-Farebox-Token"
DEFAULT_HEADER_LIMIT = 6 * 1024  # base64 characters of x-bsv-beef; proxies cap headers at 8 KB
# The gateway's answers that mean "not now, send the same payment again".
RETRYABLE = frozenset(
    {"chain-unavailable", "broadcast-pending", "payment-in-progress", "store-unavailable"}
)
# Statuses with which the gateway answers a payment it did not take.
_NOT_TAKEN = frozenset({400, 402, 409, 413, 431, 503})


class _Verdict(Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    RETRY = "retry"


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
    ) -> tuple[FareboxResponse | None, str | None, str]:
        """Pay for `method` `url` with `prepared` (into `tab`, if given): in headers if its
        BEEF fits `header_limit`, else at the pay endpoint on `pay_path`.

        Returns the request's answer (None from the pay endpoint: the request
        is still to be made), the token issued, if any, and the way taken:
        "headers" or "pay-endpoint".
        """
        encoded = base64.b64encode(prepared.beef).decode()
        if not self.use_pay_endpoint and len(encoded) <= self.header_limit:
            # With the tab's token the gateway tops that tab up.
            paying = bearer(headers, tab)
            resp, token = await self.in_headers(method, url, paying, kwargs, prepared)
            return resp, token, "headers"
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
        reason, detail = "", ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_delay)
            resp = await send(self._client(), method, url, paying, kwargs, allow_redirects=False)
            verdict, reason, detail = await _verdict(resp)
            if verdict is _Verdict.ACCEPTED:
                return resp, resp.headers.get(TOKEN_HEADER)
            resp.release()
            if verdict is _Verdict.REFUSED:
                raise PaymentRefused(reason, detail, status=resp.status, txid=prepared.txid)
        raise PaymentNotSettled(reason, detail, txid=prepared.txid)

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
        reason, detail = "", ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_delay)
            async with self._client().post(pay_url, json=body, allow_redirects=False) as resp:
                if resp.status == 200:
                    return json_object(await resp.json(content_type=None))
                problem = await problem_of(resp) or {}
                reason = str(problem.get("reason") or f"http-{resp.status}")
                detail = str(problem.get("detail") or resp.reason or "")
                if reason in RETRYABLE:
                    continue
                if problem or resp.status < 500:
                    raise PaymentRefused(reason, detail, status=resp.status, txid=prepared.txid)
        raise PaymentNotSettled(reason, detail, txid=prepared.txid)


def token_in(answer: dict[str, Any]) -> str | None:
    """The token in a pay endpoint's answer, None if it gave none."""
    token = answer.get("token")
    return token if isinstance(token, str) else None


async def _verdict(resp: FareboxResponse) -> tuple[_Verdict, str, str]:
    """Did the gateway take the payment that came with this request?"""
    if TOKEN_HEADER in resp.headers:
        return _Verdict.ACCEPTED, "", ""
    if resp.status in _NOT_TAKEN:
        problem = await problem_of(resp)
        if problem is not None and isinstance(problem.get("reason"), str):
            reason, detail = problem["reason"], str(problem.get("detail") or "")
            return (_Verdict.RETRY if reason in RETRYABLE else _Verdict.REFUSED), reason, detail
        if resp.status != 503:
            # Refused before the gateway read it, e.g. aiohttp's plain-text
            # 400 for a header over 8190 bytes.
            return _Verdict.REFUSED, f"http-{resp.status}", resp.reason or ""
    # Anything else came from the upstream, which the gateway only asks once
    # the payment is taken (a gateway that could not add its token, too).
    return _Verdict.ACCEPTED, "", ""

"""`PayingSession`: an HTTP client that pays Farebox 402s, within limits.

    async with PayingSession(wallet, max_per_request=100, max_total=1000) as s:
        async with s.get("http://127.0.0.1:8402/archive/records/X/pages/1") as resp:
            body = await resp.read()
            paid = resp.farebox_payment  # Payment(txid=..., satoshis=..., ...) or None

A request first goes out as it is (with a stored token if one covers it).
Only a 402 carrying a BSV price is paid: by BRC-121 headers on a retry of the
same request, or through the gateway's pay endpoint when the BEEF is too big
for a header. What a payment buys (the token) is kept in the wallet file and
presented as a Bearer token until it expires, so the same grant is never
bought twice.
"""

from __future__ import annotations

import asyncio
import base64
import weakref
from collections.abc import Awaitable, Coroutine, Generator
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.client.challenge import Challenge, problem_of, read_challenge
from gateway.client.errors import PaymentNotSettled, PaymentRefused, SpendingLimitExceeded
from gateway.client.proofs import refresh_proofs
from gateway.client.tokens import StoredToken, canonical_path, origin_of, read_token
from gateway.client.wallet import PreparedPayment, Wallet

TOKEN_HEADER = "X-Farebox-Token"
DEFAULT_HEADER_LIMIT = 6 * 1024  # base64 characters of x-bsv-beef; proxies cap headers at 8 KB
# The gateway's answers that mean "not now, send the same payment again".
RETRYABLE = frozenset(
    {"chain-unavailable", "broadcast-pending", "payment-in-progress", "store-unavailable"}
)
# Statuses with which the gateway answers a payment it did not take.
_NOT_TAKEN = frozenset({400, 402, 409, 413, 431, 503})
# Bodies that can be sent a second and third time (a stream cannot).
_RESENDABLE = (bytes, bytearray, str, dict, list, tuple)


@dataclass(frozen=True, slots=True)
class Payment:
    """What one request paid."""

    url: str
    method: str
    txid: str
    satoshis: int  # the price, paid to the gateway
    fee: int  # paid to miners
    via: str  # "headers" (BRC-121) or "pay-endpoint"
    grant: StoredToken | None  # what it bought, when the gateway said


class FareboxResponse(aiohttp.ClientResponse):
    """An aiohttp response that also tells what it cost."""

    farebox_payment: Payment | None = None  # set when this very request paid
    farebox_token: StoredToken | None = None  # the grant presented or bought, if any

    @property
    def farebox_used_token(self) -> bool:
        """Served on a grant bought earlier: this request paid nothing."""
        return self.farebox_token is not None and self.farebox_payment is None


class _Verdict(Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    RETRY = "retry"


class _RequestContext(Awaitable[FareboxResponse]):
    """`await s.get(url)` or `async with s.get(url) as resp` (released on exit)."""

    __slots__ = ("_coro", "_resp")

    def __init__(self, coro: Coroutine[Any, Any, FareboxResponse]) -> None:
        self._coro = coro
        self._resp: FareboxResponse | None = None

    def __await__(self) -> Generator[Any, None, FareboxResponse]:
        return self._coro.__await__()

    async def __aenter__(self) -> FareboxResponse:
        self._resp = await self._coro
        return self._resp

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._resp is not None:
            self._resp.release()


class PayingSession:
    def __init__(
        self,
        wallet: Wallet,
        *,
        max_per_request: int | None = None,
        max_total: int | None = None,
        header_limit: int = DEFAULT_HEADER_LIMIT,
        use_pay_endpoint: bool = False,
        chain_url: str | None = None,
        retries: int = 3,
        retry_delay: float = 0.5,
        timeout: aiohttp.ClientTimeout | None = None,
        cookie_jar: aiohttp.abc.AbstractCookieJar | None = None,
    ) -> None:
        """
        max_per_request / max_total: the most one price / all prices paid in
            this session may come to (fees not counted); None: no limit.
        header_limit: largest base64 BEEF sent as a header; bigger payments
            go to the pay endpoint. use_pay_endpoint: always use it.
        chain_url: an ARC-compatible service (the devnet) to fetch merkle
            proofs from before paying, which keeps BEEFs short.
        cookie_jar: none by default: grants travel as Bearer tokens, managed
            here, not as the gateway's cookies.
        """
        self.wallet = wallet
        self.max_per_request = max_per_request
        self.max_total = max_total
        self.header_limit = header_limit
        self.use_pay_endpoint = use_pay_endpoint
        self.chain_url = chain_url
        self.retries = retries
        self.retry_delay = retry_delay
        self.payments: list[Payment] = []
        self._timeout = timeout or aiohttp.ClientTimeout(sock_connect=10, sock_read=60)
        self._cookie_jar = cookie_jar
        self._http: aiohttp.ClientSession | None = None
        self._spent = 0
        self._in_flight = 0  # prices of payments under way, held against max_total
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def __aenter__(self) -> PayingSession:
        self._http = aiohttp.ClientSession(
            response_class=FareboxResponse,
            cookie_jar=self._cookie_jar or aiohttp.DummyCookieJar(),
            timeout=self._timeout,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def spent(self) -> int:
        """Satoshis paid to gateways in this session (fees not included)."""
        return self._spent

    @property
    def fees(self) -> int:
        return sum(p.fee for p in self.payments)

    # ----- requests ---------------------------------------------------------------

    def request(self, method: str, url: str | URL, **kwargs: Any) -> _RequestContext:
        """Like `aiohttp.ClientSession.request`; the body must be bytes, str or JSON."""
        return _RequestContext(self._request(method.upper(), URL(url), kwargs))

    def get(self, url: str | URL, **kwargs: Any) -> _RequestContext:
        return self.request("GET", url, **kwargs)

    def head(self, url: str | URL, **kwargs: Any) -> _RequestContext:
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str | URL, **kwargs: Any) -> _RequestContext:
        return self.request("POST", url, **kwargs)

    def put(self, url: str | URL, **kwargs: Any) -> _RequestContext:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str | URL, **kwargs: Any) -> _RequestContext:
        return self.request("DELETE", url, **kwargs)

    async def _request(self, method: str, url: URL, kwargs: dict[str, Any]) -> FareboxResponse:
        data = kwargs.get("data")
        if data is not None and not isinstance(data, _RESENDABLE):
            raise TypeError("a paid request may be sent again: give its body as bytes, str or JSON")
        headers: CIMultiDict[str] = CIMultiDict(kwargs.pop("headers", None) or {})
        params = kwargs.pop("params", None)
        if params:
            # Into the URL once: the paid retry goes to the 402's URL, which has them.
            url = url.extend_query(params)
        stored = self._token_for(method, url)
        resp = await self._send(method, url, _bearer(headers, stored), kwargs)
        if resp.status != 402:
            resp.farebox_token = stored
            return resp
        challenge = await read_challenge(resp)
        if challenge is None:
            return resp  # a 402 that asks for no BSV payment: nothing to pay
        if stored is not None and challenge.scope in (None, stored.scope):
            # The grant itself was refused (revoked, or the gateway's keys
            # changed): presenting it again is pointless.
            self.wallet.forget_token(stored.token)
        url = resp.url  # after redirects: where the 402 came from
        resp.release()
        lock = self._locks.get((origin_of(url), url.raw_path))
        if lock is None:
            lock = self._locks[(origin_of(url), url.raw_path)] = asyncio.Lock()
        async with lock:
            # A concurrent request may have bought the grant while this one waited.
            stored = self._token_for(method, url)
            if stored is not None:
                resp = await self._send(method, url, _bearer(headers, stored), kwargs)
                if resp.status != 402:
                    resp.farebox_token = stored
                    return resp
                resp.release()
            return await self._pay(method, url, headers, kwargs, challenge)

    async def _send(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        kwargs: dict[str, Any],
        **override: Any,
    ) -> FareboxResponse:
        if self._http is None:
            raise RuntimeError("use PayingSession in `async with`")
        resp = await self._http.request(method, url, headers=headers, **{**kwargs, **override})
        assert isinstance(resp, FareboxResponse)
        return resp

    def _token_for(self, method: str, url: URL) -> StoredToken | None:
        path = canonical_path(url)
        if path is None:
            return None
        fitting = [t for t in self.wallet.tokens(origin_of(url)) if t.allows(method, path)]
        # The narrowest grant first, then the one that lasts longest.
        fitting.sort(key=lambda t: (t.covers != "resource", -t.expires))
        return fitting[0] if fitting else None

    # ----- paying -----------------------------------------------------------------

    def _check_limits(self, price: int, url: URL) -> None:
        if self.max_per_request is not None and price > self.max_per_request:
            raise SpendingLimitExceeded(
                "per-request", price, self.max_per_request, self._spent, str(url)
            )
        committed = self._spent + self._in_flight
        if self.max_total is not None and committed + price > self.max_total:
            raise SpendingLimitExceeded("total", price, self.max_total, committed, str(url))

    async def _pay(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        kwargs: dict[str, Any],
        challenge: Challenge,
    ) -> FareboxResponse:
        price = challenge.satoshis
        self._check_limits(price, url)  # before any coin is touched
        self._in_flight += price
        try:
            if self.chain_url and self._http is not None:
                await refresh_proofs(self.wallet, self._http, self.chain_url)
            prepared = self.wallet.prepare_payment(challenge.server, price)
            encoded = base64.b64encode(prepared.beef).decode()
            by_headers = not self.use_pay_endpoint and len(encoded) <= self.header_limit
            resp: FareboxResponse | None = None
            try:
                if by_headers:
                    resp, token = await self._pay_by_headers(method, url, headers, kwargs, prepared)
                else:
                    token = await self._pay_by_endpoint(method, url, challenge, prepared)
            except PaymentRefused:
                self.wallet.release(prepared.txid)
                raise
            except aiohttp.ClientConnectorError:
                self.wallet.release(prepared.txid)  # never connected: nothing was sent
                raise
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise PaymentNotSettled(
                    "connection-lost", f"{type(exc).__name__}: {exc}", txid=prepared.txid
                ) from exc
            self.wallet.settle(prepared.txid)
            grant = read_token(origin_of(url), token) if token else None
            if grant is not None:
                self.wallet.remember_token(grant)
            payment = Payment(
                url=str(url),
                method=method,
                txid=prepared.txid,
                satoshis=price,
                fee=prepared.fee,
                via="headers" if by_headers else "pay-endpoint",
                grant=grant,
            )
            self.payments.append(payment)
            self._spent += price
        finally:
            self._in_flight -= price
        if resp is None:  # paid at the endpoint: now ask with the grant
            resp = await self._send(method, url, _bearer(headers, grant), kwargs)
        resp.farebox_payment = payment
        resp.farebox_token = grant
        return resp

    async def _pay_by_headers(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        kwargs: dict[str, Any],
        prepared: PreparedPayment,
    ) -> tuple[FareboxResponse, str | None]:
        """BRC-121: the same request again, the payment in its headers."""
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
            resp = await self._send(method, url, paying, kwargs, allow_redirects=False)
            verdict, reason, detail = await _verdict(resp)
            if verdict is _Verdict.ACCEPTED:
                return resp, resp.headers.get(TOKEN_HEADER)
            resp.release()
            if verdict is _Verdict.REFUSED:
                raise PaymentRefused(reason, detail, status=resp.status, txid=prepared.txid)
        raise PaymentNotSettled(reason, detail, txid=prepared.txid)

    async def _pay_by_endpoint(
        self, method: str, url: URL, challenge: Challenge, prepared: PreparedPayment
    ) -> str | None:
        """POST the payment to the gateway's pay endpoint; no header size limit there."""
        assert self._http is not None
        body = {
            "beef": base64.b64encode(prepared.beef).decode(),
            "sender": prepared.sender,
            "nonce": prepared.prefix,
            "time": prepared.time_ms,
            "vout": prepared.vout,
            "method": method,
            "url": url.raw_path_qs,
        }
        # Only a path is taken from the 402: a payment never leaves this origin.
        pay_url = url.origin().join(URL(challenge.pay_url))
        reason, detail = "", ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_delay)
            async with self._http.post(pay_url, json=body, allow_redirects=False) as resp:
                if resp.status == 200:
                    answer = await resp.json(content_type=None)
                    token = answer.get("token") if isinstance(answer, dict) else None
                    return token if isinstance(token, str) else None
                problem = await problem_of(resp) or {}
                reason = str(problem.get("reason") or f"http-{resp.status}")
                detail = str(problem.get("detail") or resp.reason or "")
                if reason in RETRYABLE:
                    continue
                if problem or resp.status < 500:
                    raise PaymentRefused(reason, detail, status=resp.status, txid=prepared.txid)
        raise PaymentNotSettled(reason, detail, txid=prepared.txid)


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


def _bearer(headers: CIMultiDict[str], token: StoredToken | None) -> CIMultiDict[str]:
    if token is None:
        return headers
    with_token = headers.copy()
    with_token["Authorization"] = f"Bearer {token.token}"
    return with_token

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

Metered routes are paid from a prepaid tab instead: their 402 asks for a
top-up (at least the service's smallest, or the session's `top_up`), which
opens a tab or, with the tab's token presented, tops up the one the wallet
has. Its token then pays for every metered route of the service until the
balance runs low; each answer tells what it cost:

    draw = "http://127.0.0.1:8402/meter/meters/HM-0042/draw"
    async with PayingSession(wallet, top_up=5000) as s:
        async with s.post(draw, json={"kwh": 2.5}) as resp:
            resp.farebox_charge, resp.farebox_balance  # Decimal("100"), Decimal("4900")
        await s.tab_balance(draw)  # TabBalance(tab="t3f...", satoshis=Decimal("4900"), ...)
        await s.top_up(draw, 2000, method="POST")  # the same tab, 6900 satoshis
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import weakref
from collections.abc import AsyncIterator, Awaitable, Coroutine, Generator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import Enum
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.client.challenge import TAB_PATH, Challenge, problem_of, read_challenge
from gateway.client.errors import (
    ClientError,
    PaymentNotSettled,
    PaymentRefused,
    SpendingLimitExceeded,
)
from gateway.client.proofs import refresh_proofs
from gateway.client.tokens import StoredToken, canonical_path, origin_of, read_token
from gateway.client.wallet import PreparedPayment, Wallet

TOKEN_HEADER = "X-Farebox-Token"
TAB_HEADER = "X-Farebox-Tab"  # the tab a metered answer was charged to
CHARGE_HEADER = "X-Farebox-Charge"  # satoshis that answer cost
CHARGE_LIMIT_HEADER = "X-Farebox-Charge-Limit"  # per MB, length unknown: the most it costs
BALANCE_HEADER = "X-Farebox-Balance"  # satoshis left on the tab
DEFAULT_HEADER_LIMIT = 6 * 1024  # base64 characters of x-bsv-beef; proxies cap headers at 8 KB
# The gateway's answers that mean "not now, send the same payment again".
RETRYABLE = frozenset(
    {"chain-unavailable", "broadcast-pending", "payment-in-progress", "store-unavailable"}
)
# Statuses with which the gateway answers a payment it did not take.
_NOT_TAKEN = frozenset({400, 402, 409, 413, 431, 503})
# Bodies that can be sent a second and third time (a stream cannot).
_RESENDABLE = (bytes, bytearray, str, dict, list, tuple)
# Which stored token to present when several fit: the narrowest grant first.
_RANK = {"resource": 0, "route": 1, "tab": 2}


@dataclass(frozen=True, slots=True)
class Payment:
    """What one request paid."""

    url: str
    method: str
    txid: str
    satoshis: int  # the price (or a tab's whole top-up), paid to the gateway
    fee: int  # paid to miners
    via: str  # "headers" (BRC-121) or "pay-endpoint"
    grant: StoredToken | None  # what it bought, when the gateway said

    @property
    def tab(self) -> str:
        """The tab this payment opened or topped up ("" if it bought a grant)."""
        return self.grant.tab if self.grant is not None else ""


@dataclass(frozen=True, slots=True)
class TabBalance:
    """What a prepaid tab holds, as the gateway said."""

    tab: str  # the tab's id
    service: str
    scope: str  # the routes its token opens, e.g. "/meter/**" (only metered ones draw on it)
    satoshis: Decimal  # the balance; charges may leave fractions (down to a msat)
    expires: int  # Unix seconds: when the tab's newest token expires


class FareboxResponse(aiohttp.ClientResponse):
    """An aiohttp response that also tells what it cost."""

    farebox_payment: Payment | None = None  # set when this very request paid
    farebox_token: StoredToken | None = None  # the grant presented or bought, if any

    @property
    def farebox_used_token(self) -> bool:
        """Served on a grant bought earlier (or charged to a tab): this request paid nothing."""
        if self.farebox_token is None or self.farebox_payment is not None:
            return False
        # A tab's token covers its whole service; only metered answers draw on it.
        return self.farebox_token.covers != "tab" or TAB_HEADER in self.headers

    @property
    def farebox_tab(self) -> str | None:
        """The prepaid tab this answer was charged to (metered routes)."""
        return self.headers.get(TAB_HEADER)

    @property
    def farebox_charge(self) -> Decimal | None:
        """Satoshis this answer cost from the tab (may have fractions)."""
        return _amount(self.headers.get(CHARGE_HEADER))

    @property
    def farebox_charge_limit(self) -> Decimal | None:
        """Per MB with the length unknown in advance: the most this answer may cost."""
        return _amount(self.headers.get(CHARGE_LIMIT_HEADER))

    @property
    def farebox_balance(self) -> Decimal | None:
        """Satoshis left on the tab after this answer (with a charge limit:
        left while the most it may cost is held)."""
        return _amount(self.headers.get(BALANCE_HEADER))


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
        top_up: int | None = None,
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
            A tab's top-up counts in full.
        top_up: when a metered route asks for a tab's top-up, pay at least
            this much (the gateway's smallest top-up if that is more); the
            whole amount is credited to the tab.
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
        if top_up is not None and top_up < 1:
            raise ValueError("top_up must be at least 1 satoshi")
        self.top_up_at_least = top_up  # (`top_up` is the method)
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
        # One payment at a time per resource (and per tab, for top-ups).
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
        if stored is not None and _refused(stored, challenge):
            # The grant itself was refused (revoked, or the gateway's keys
            # changed): presenting it again is pointless.
            self.wallet.forget_token(stored.token)
        url = resp.url  # after redirects: where the 402 came from
        resp.release()
        async with self._lock(url, challenge):
            # A concurrent request may have bought the grant, or topped the
            # tab up, while this one waited; or the 402 was for a tab and a
            # grant of another kind went first.
            fresh = self._token_for(method, url, tab=challenge.for_tab)
            if fresh is not None and (stored is None or fresh.token != stored.token):
                resp = await self._send(method, url, _bearer(headers, fresh), kwargs)
                if resp.status != 402:
                    resp.farebox_token = fresh
                    return resp
                try:
                    challenge = await read_challenge(resp) or challenge
                finally:
                    resp.release()
                if _refused(fresh, challenge):
                    self.wallet.forget_token(fresh.token)
            return await self._pay(method, url, headers, kwargs, challenge)

    def _lock(self, url: URL, challenge: Challenge) -> asyncio.Lock:
        # A tab is topped up once however many of its routes ran it dry.
        what = f"tab {challenge.scope}" if challenge.for_tab else url.raw_path
        lock = self._locks.get((origin_of(url), what))
        if lock is None:
            lock = self._locks[(origin_of(url), what)] = asyncio.Lock()
        return lock

    async def _send(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        kwargs: dict[str, Any],
        **override: Any,
    ) -> FareboxResponse:
        resp = await self._client().request(method, url, headers=headers, **{**kwargs, **override})
        assert isinstance(resp, FareboxResponse)
        return resp

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("use PayingSession in `async with`")
        return self._http

    def _token_for(self, method: str, url: URL, *, tab: bool | None = None) -> StoredToken | None:
        """The stored token to present; `tab`: only tab tokens (True) or only grants (False)."""
        path = canonical_path(url)
        if path is None:
            return None
        fitting = [
            t
            for t in self.wallet.tokens(origin_of(url))
            if t.allows(method, path) and (tab is None or (t.covers == "tab") == tab)
        ]
        # The narrowest grant first, a tab last; then the one that lasts longest.
        fitting.sort(key=lambda t: (_RANK.get(t.covers, 1), -t.expires))
        return fitting[0] if fitting else None

    # ----- tabs -------------------------------------------------------------------

    async def top_up(self, url: str | URL, satoshis: int, *, method: str = "GET") -> TabBalance:
        """Pay at least `satoshis` into the tab of the service at `url`.

        `url` is any metered URL of the service, `method` one it takes there:
        it is asked once, unpaid and without a token (the gateway forwards
        nothing), to learn the gateway's key and its smallest top-up, which
        is paid if it is more than `satoshis`. The wallet's tab for the
        service is topped up (after checking with the gateway that the tab is
        still good), or a new one opened. The payment goes to the pay
        endpoint; the session's limits apply to it.
        """
        if satoshis < 1:
            raise ValueError("a top-up is at least 1 satoshi")
        method = method.upper()
        resp = await self._send(method, URL(url), CIMultiDict(), {}, allow_redirects=False)
        try:
            challenge = await read_challenge(resp) if resp.status == 402 else None
        finally:
            resp.release()
        if challenge is None or not challenge.for_tab:
            raise ClientError(
                f"{method} {url} is not paid from a prepaid tab (it answered {resp.status}): "
                "nothing to top up"
            )
        target = resp.url
        price = max(satoshis, challenge.satoshis)
        async with self._lock(target, challenge):
            if self._token_for("GET", target, tab=True) is not None:
                # The tab must still be good: a revoked tab's token is forgotten here.
                await self.tab_balance(target)
            tab = self._token_for("GET", target, tab=True)
            try:
                return await self._top_up(method, target, challenge, price, tab)
            except PaymentRefused as exc:
                if tab is None or exc.reason != "bad-tab":
                    raise
            self.wallet.forget_token(tab.token)  # the gateway does not know it: open a new tab
            return await self._top_up(method, target, challenge, price, None)

    async def _top_up(
        self, method: str, url: URL, challenge: Challenge, price: int, tab: StoredToken | None
    ) -> TabBalance:
        async with self._spending(url, challenge.server, price) as prepared:
            answer = await self._pay_by_endpoint(method, url, challenge.pay_url, prepared, tab)
        grant = self._remember(url, _token_in(answer))
        self.payments.append(
            Payment(
                url=str(url),
                method=method,
                txid=prepared.txid,
                satoshis=price,
                fee=prepared.fee,
                via="pay-endpoint",
                grant=grant,
            )
        )
        about = _dict(answer.get("tab"))
        balance = _amount(about.get("balance_satoshis"))
        if grant is None or not grant.tab or balance is None:
            raise ClientError(
                f"the gateway took top-up {prepared.txid} but did not say which tab it credited"
            )
        return TabBalance(
            tab=str(about.get("id") or grant.tab),
            service=grant.service,
            scope=grant.scope,
            satoshis=balance,
            expires=grant.expires,
        )

    async def tab_balance(self, url: str | URL) -> TabBalance | None:
        """What the wallet's tab for the service at `url` holds; None: no tab.

        `url` is any URL of the service (or its mount). A tab the gateway no
        longer knows (revoked, or its keys changed) is forgotten: None.
        """
        url = URL(url)
        stored = self._token_for("GET", url, tab=True)
        if stored is None:
            return None
        where = url.origin().join(URL(TAB_PATH))
        headers = {"Authorization": f"Bearer {stored.token}"}
        async with self._client().get(where, headers=headers, allow_redirects=False) as resp:
            if resp.status == 401:
                self.wallet.forget_token(stored.token)
                return None
            if resp.status != 200:
                problem = await problem_of(resp) or {}
                raise ClientError(
                    f"{where} answered {resp.status} "
                    f"({problem.get('reason') or resp.reason}): {problem.get('detail') or ''}"
                )
            body = _dict(await resp.json(content_type=None))
        balance = _amount(body.get("balance_satoshis"))
        if balance is None:
            raise ClientError(f"{where} did not say what the tab holds")
        return TabBalance(
            tab=str(body.get("tab") or stored.tab),
            service=str(body.get("service") or stored.service),
            scope=str(body.get("scope") or stored.scope),
            satoshis=balance,
            expires=int(body.get("expires") or stored.expires),
        )

    # ----- paying -----------------------------------------------------------------

    def _check_limits(self, price: int, url: URL) -> None:
        if self.max_per_request is not None and price > self.max_per_request:
            raise SpendingLimitExceeded(
                "per-request", price, self.max_per_request, self._spent, str(url)
            )
        committed = self._spent + self._in_flight
        if self.max_total is not None and committed + price > self.max_total:
            raise SpendingLimitExceeded("total", price, self.max_total, committed, str(url))

    def _price(self, challenge: Challenge) -> int:
        """What to pay: the price, or for a tab the top-up the session prefers."""
        if not challenge.for_tab:
            return challenge.satoshis
        amount = max(challenge.satoshis, self.top_up_at_least or 0)
        terms = challenge.tab
        if terms is not None and terms.most_satoshis is not None and terms.balance is not None:
            # Enough for this request, should the smallest top-up not be.
            amount = max(amount, math.ceil(terms.most_satoshis - terms.balance))
        return amount

    @contextlib.asynccontextmanager
    async def _spending(self, url: URL, server: str, price: int) -> AsyncIterator[PreparedPayment]:
        """A payment of `price` to `server`, within the limits; the block delivers it.

        Delivered: its coins are spent. Refused, or never sent: they are free
        again. Lost on the way: they stay reserved (PaymentNotSettled).
        """
        self._check_limits(price, url)  # before any coin is touched
        self._in_flight += price
        try:
            if self.chain_url and self._http is not None:
                await refresh_proofs(self.wallet, self._http, self.chain_url)
            prepared = self.wallet.prepare_payment(server, price)
            try:
                yield prepared
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
            self._spent += price
        finally:
            self._in_flight -= price

    def _remember(self, url: URL, token: str | None) -> StoredToken | None:
        grant = read_token(origin_of(url), token) if token else None
        if grant is not None:
            self.wallet.remember_token(grant)
        return grant

    async def _pay(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        kwargs: dict[str, Any],
        challenge: Challenge,
    ) -> FareboxResponse:
        price = self._price(challenge)
        # A top-up goes to the wallet's tab for this service, if it has one.
        tab = self._token_for(method, url, tab=True) if challenge.for_tab else None
        try:
            return await self._pay_with(method, url, headers, kwargs, challenge, price, tab)
        except PaymentRefused as exc:
            if tab is None or exc.reason != "bad-tab":
                raise
        self.wallet.forget_token(tab.token)  # the gateway does not know it: open a new tab
        return await self._pay_with(method, url, headers, kwargs, challenge, price, None)

    async def _pay_with(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        kwargs: dict[str, Any],
        challenge: Challenge,
        price: int,
        tab: StoredToken | None,
    ) -> FareboxResponse:
        resp: FareboxResponse | None = None
        async with self._spending(url, challenge.server, price) as prepared:
            encoded = base64.b64encode(prepared.beef).decode()
            by_headers = not self.use_pay_endpoint and len(encoded) <= self.header_limit
            if by_headers:
                # With the tab's token the gateway tops that tab up.
                paying = _bearer(headers, tab)
                resp, token = await self._pay_by_headers(method, url, paying, kwargs, prepared)
            else:
                answer = await self._pay_by_endpoint(method, url, challenge.pay_url, prepared, tab)
                token = _token_in(answer)
        grant = self._remember(url, token)
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
        self,
        method: str,
        url: URL,
        pay_path: str,
        prepared: PreparedPayment,
        tab: StoredToken | None = None,
    ) -> dict[str, Any]:
        """POST the payment to the gateway's pay endpoint; no header size limit there.

        With `tab` (its token) the payment tops up that tab. Returns the answer.
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
                    return _dict(await resp.json(content_type=None))
                problem = await problem_of(resp) or {}
                reason = str(problem.get("reason") or f"http-{resp.status}")
                detail = str(problem.get("detail") or resp.reason or "")
                if reason in RETRYABLE:
                    continue
                if problem or resp.status < 500:
                    raise PaymentRefused(reason, detail, status=resp.status, txid=prepared.txid)
        raise PaymentNotSettled(reason, detail, txid=prepared.txid)


def _refused(stored: StoredToken, challenge: Challenge) -> bool:
    """Was the token presented refused itself (revoked, unknown), not just short?"""
    if challenge.covers is not None and (stored.covers == "tab") != challenge.for_tab:
        return False  # a grant for priced routes on a metered one, or a tab's the other way
    if challenge.reason == "tab-exhausted":
        return False  # the tab is good, only low: it is topped up, not replaced
    return challenge.scope in (None, stored.scope)


def _token_in(answer: dict[str, Any]) -> str | None:
    token = answer.get("token")
    return token if isinstance(token, str) else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _amount(value: object) -> Decimal | None:
    """Satoshis as the gateway writes them ("10", "2.93"); None if absent or not a number."""
    if not isinstance(value, str):
        return None
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


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

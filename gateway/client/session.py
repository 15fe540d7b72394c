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

The session only runs the request flow; its parts keep the rest: `Grants`
(grants.py) picks the stored token to present, `Purse` (purse.py) the limits,
the coins and the record of payments, `Courier` (delivery.py) hands a payment
over and resends it, `Tabs` (tabs.py) asks about and tops up tabs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.client.challenge import Challenge, read_challenge
from gateway.client.delivery import DEFAULT_HEADER_LIMIT, Courier
from gateway.client.errors import ClientError, ClockSkew, OriginNotAllowed
from gateway.client.grants import Grants, bearer, refused
from gateway.client.purse import Purse, SettledMeanwhile
from gateway.client.records import PreparedPayment
from gateway.client.responses import (
    FareboxResponse,
    Payment,
    RequestContext,
    TabBalance,
    send,
)
from gateway.client.tabs import Tabs
from gateway.client.tokens import StoredToken, origin_of
from gateway.client.wallet import Wallet

# The gateway's reason for a grant refused only because its clock says it
# is not valid yet (instances whose clocks disagree beyond its leeway).
NOT_YET_VALID = "grant-not-yet-valid"
# Bodies that can be sent a second and third time (a stream cannot).
_RESENDABLE = (bytes, bytearray, str, dict, list, tuple)


T = TypeVar("T")


class _Setting(Generic[T]):
    """A session setting that one of its parts keeps: read and written there."""

    def __init__(self, part: str) -> None:
        self._part = part
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, session: None, owner: type | None = None) -> _Setting[T]: ...
    @overload
    def __get__(self, session: object, owner: type | None = None) -> T: ...
    def __get__(self, session: object, owner: type | None = None) -> T | _Setting[T]:
        if session is None:
            return self
        value: T = getattr(getattr(session, self._part), self._name)
        return value

    def __set__(self, session: object, value: T) -> None:
        setattr(getattr(session, self._part), self._name, value)


class PayingSession:
    """An HTTP client that pays Farebox 402s from `wallet`, within limits (module docstring)."""

    # As __init__ takes them; changing one applies to the next payment.
    max_per_request = _Setting[int | None]("_purse")
    max_total = _Setting[int | None]("_purse")
    top_up_at_least = _Setting[int | None]("_purse")  # __init__'s `top_up` (a method's name)
    chain_url = _Setting[str | None]("_purse")
    header_limit = _Setting[int]("_courier")
    use_pay_endpoint = _Setting[bool]("_courier")
    retries = _Setting[int]("_courier")
    retry_delay = _Setting[float]("_courier")  # seconds
    payments = _Setting[list[Payment]]("_purse")  # every payment made, in order

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
        allow_origins: Iterable[str] = (),
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
        allow_origins: origins ("https://host[:port]") whose 402 may be paid
            when a request was redirected there; a 402 from any origin but
            the one requested and these raises OriginNotAllowed, unpaid.
        """
        self._purse = Purse(
            wallet,
            max_per_request=max_per_request,
            max_total=max_total,
            top_up=top_up,
            chain_url=chain_url,
        )
        self._courier = Courier(
            self._client,
            header_limit=header_limit,
            use_pay_endpoint=use_pay_endpoint,
            retries=retries,
            retry_delay=retry_delay,
        )
        self._grants = Grants(wallet)
        self._tabs = Tabs(self._client, self._grants, self._purse, self._courier)
        self._timeout = timeout or aiohttp.ClientTimeout(sock_connect=10, sock_read=60)
        self._cookie_jar = cookie_jar
        self._allowed = frozenset(_origin(o) for o in allow_origins)
        self._http: aiohttp.ClientSession | None = None

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
        """Close the HTTP client; the session can be entered again."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def wallet(self) -> Wallet:
        """The wallet this session pays from and keeps its tokens in."""
        return self._purse.wallet

    @property
    def spent(self) -> int:
        """Satoshis paid to gateways in this session (fees not included)."""
        return self._purse.spent

    @property
    def fees(self) -> int:
        """Satoshis paid to miners in this session."""
        return self._purse.fees

    # ----- requests ---------------------------------------------------------------

    def request(self, method: str, url: str | URL, **kwargs: Any) -> RequestContext:
        """Like `aiohttp.ClientSession.request`; the body must be bytes, str or JSON."""
        return RequestContext(self._request(method.upper(), URL(url), kwargs))

    def get(self, url: str | URL, **kwargs: Any) -> RequestContext:
        """`request("GET", url, ...)`."""
        return self.request("GET", url, **kwargs)

    def head(self, url: str | URL, **kwargs: Any) -> RequestContext:
        """`request("HEAD", url, ...)`."""
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str | URL, **kwargs: Any) -> RequestContext:
        """`request("POST", url, ...)`."""
        return self.request("POST", url, **kwargs)

    def put(self, url: str | URL, **kwargs: Any) -> RequestContext:
        """`request("PUT", url, ...)`."""
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str | URL, **kwargs: Any) -> RequestContext:
        """`request("DELETE", url, ...)`."""
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
        stored = self._grants.find(method, url)
        resp = await send(self._client(), method, url, bearer(headers, stored), kwargs)
        if resp.status != 402:
            resp.farebox_token = stored
            return resp
        challenge = await read_challenge(resp)
        if challenge is None:
            return resp  # a 402 that asks for no BSV payment: nothing to pay
        payee = origin_of(resp.url)
        if payee != origin_of(url) and payee not in self._allowed:
            resp.release()  # redirected to an origin nobody named
            raise OriginNotAllowed(origin_of(url), payee)
        if challenge.reason == NOT_YET_VALID and stored is not None:
            resp.release()  # refused only for the time: paying again would buy it twice
            raise ClockSkew(str(url), challenge.detail or challenge.reason)
        if stored is not None and refused(stored, challenge):
            # The grant itself was refused (revoked, or the gateway's keys
            # changed): presenting it again is pointless.
            self._grants.forget(stored)
        url = resp.url  # after redirects: where the 402 came from
        resp.release()
        async with self._purse.lock(url, challenge):
            for _ in range(3):
                since = time.time()
                # A concurrent request, or another process on this wallet, may
                # have bought the grant or topped the tab up while this one
                # waited; or the 402 was for a tab and a grant went first.
                self.wallet.reload()
                fresh = self._grants.find(method, url, tab=challenge.for_tab)
                if fresh is not None and (stored is None or fresh.token != stored.token):
                    resp = await send(self._client(), method, url, bearer(headers, fresh), kwargs)
                    if resp.status != 402:
                        resp.farebox_token = fresh
                        return resp
                    try:
                        challenge = await read_challenge(resp) or challenge
                    finally:
                        resp.release()
                    if challenge.reason == NOT_YET_VALID:
                        raise ClockSkew(str(url), challenge.detail or challenge.reason)
                    if refused(fresh, challenge):
                        self._grants.forget(fresh)
                    stored = fresh
                try:
                    return await self._pay(method, url, headers, kwargs, challenge, since)
                except SettledMeanwhile:
                    continue  # its grant is in the wallet now: present it
            raise ClientError(f"{url}: bought by another process but its grant does not open it")

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("use PayingSession in `async with`")
        return self._http

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
        return await self._tabs.top_up(URL(url), satoshis, method.upper())

    async def tab_balance(self, url: str | URL) -> TabBalance | None:
        """What the wallet's tab for the service at `url` holds; None: no tab.

        `url` is any URL of the service (or its mount). A tab the gateway no
        longer knows (revoked, or its keys changed) is forgotten: None.
        """
        return await self._tabs.balance(URL(url))

    # ----- paying -----------------------------------------------------------------

    async def _pay(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        kwargs: dict[str, Any],
        challenge: Challenge,
        since: float,
    ) -> FareboxResponse:
        price = self._purse.price(challenge)
        # A top-up goes to the wallet's tab for this service, if it has one.
        tab = self._grants.find(method, url, tab=True) if challenge.for_tab else None
        return await self._grants.with_tab(
            tab,
            lambda into: self._pay_with(
                method, url, headers, kwargs, challenge, price, into, since
            ),
        )

    async def _pay_with(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        kwargs: dict[str, Any],
        challenge: Challenge,
        price: int,
        tab: StoredToken | None,
        since: float,
    ) -> FareboxResponse:
        purpose = self._purse.purpose(url, challenge, method, tab)
        grants: list[StoredToken | None] = []

        def deliver(
            prepared: PreparedPayment, resent: bool
        ) -> Awaitable[tuple[FareboxResponse | None, str | None, str]]:
            return self._courier.deliver(
                method, url, headers, kwargs, challenge.pay_url, prepared, tab, resent=resent
            )

        def keep(result: tuple[FareboxResponse | None, str | None, str]) -> None:
            grants.append(self._grants.remember(url, result[1]))

        prepared, (resp, _, via) = await self._purse.pay(
            url, purpose, price, self._http, deliver, since=since, keep=keep
        )
        grant = grants[-1]
        payment = self._purse.record(url, method, prepared, prepared.satoshis, via, grant)
        if resp is None:  # paid at the endpoint: now ask with the grant
            resp = await send(self._client(), method, url, bearer(headers, grant), kwargs)
        resp.farebox_payment = payment
        resp.farebox_token = grant
        return resp


def _origin(text: str) -> str:
    """An origin the caller names ("https://host[:port]"); ValueError otherwise."""
    try:
        url = URL(text.strip())
    except ValueError:
        url = URL()
    if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
        raise ValueError(f"not an origin (http[s]://host[:port]): {text!r}")
    return origin_of(url)

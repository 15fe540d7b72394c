"""What a paying request gives back: the response, what it paid, a tab's balance.

`FareboxResponse` is the aiohttp response a `PayingSession` returns, with
what the request cost read from the gateway's headers; `Payment` records one
payment, `TabBalance` what a prepaid tab holds. `send` is the one place a
request leaves the session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Generator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.client.tokens import StoredToken

TAB_HEADER = "X-Farebox-Tab"  # the tab a metered answer was charged to
CHARGE_HEADER = "X-Farebox-Charge"  # satoshis that answer cost
CHARGE_LIMIT_HEADER = "X-Farebox-Charge-Limit"  # per MB, length unknown: the most it costs
BALANCE_HEADER = "X-Farebox-Balance"  # satoshis left on the tab


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
        return read_amount(self.headers.get(CHARGE_HEADER))

    @property
    def farebox_charge_limit(self) -> Decimal | None:
        """Per MB with the length unknown in advance: the most this answer may cost."""
        return read_amount(self.headers.get(CHARGE_LIMIT_HEADER))

    @property
    def farebox_balance(self) -> Decimal | None:
        """Satoshis left on the tab after this answer (with a charge limit:
        left while the most it may cost is held)."""
        return read_amount(self.headers.get(BALANCE_HEADER))


class RequestContext(Awaitable[FareboxResponse]):
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


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: URL,
    headers: CIMultiDict[str],
    kwargs: dict[str, Any],
    **override: Any,
) -> FareboxResponse:
    """`http.request` with `override` over the caller's `kwargs`; `http` must have been
    made with `response_class=FareboxResponse` (AssertionError otherwise)."""
    resp = await http.request(method, url, headers=headers, **{**kwargs, **override})
    assert isinstance(resp, FareboxResponse)
    return resp


def read_amount(value: object) -> Decimal | None:
    """Satoshis as the gateway writes them ("10", "2.93"); None if absent or not a number."""
    if not isinstance(value, str):
        return None
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def json_object(value: object) -> dict[str, Any]:
    """`value` if it is a JSON object (a dict), else {}: answers are read defensively."""
    return value if isinstance(value, dict) else {}

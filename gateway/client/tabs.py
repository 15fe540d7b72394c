"""Prepaid tabs asked about and topped up on purpose, outside any metered request.

A metered request that finds its tab low tops it up on its own (the session
pays its 402); these are the explicit calls behind `PayingSession.tab_balance`
and `PayingSession.top_up`. A top-up always goes to the pay endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.client.challenge import Challenge, problem_of, read_challenge
from gateway.client.delivery import Courier, token_in
from gateway.client.errors import ClientError
from gateway.client.grants import Grants
from gateway.client.purse import Purse
from gateway.client.records import PreparedPayment
from gateway.client.responses import TabBalance, json_object, read_amount, send
from gateway.client.tokens import StoredToken
from gateway.edge.urls import TAB


class Tabs:
    """The wallet's prepaid tabs: their balance, and top-ups paid from the purse."""

    def __init__(
        self,
        client: Callable[[], aiohttp.ClientSession],
        grants: Grants,
        purse: Purse,
        courier: Courier,
    ) -> None:
        """`client` gives the open HTTP client (RuntimeError if there is none)."""
        self._client = client
        self._grants = grants
        self._purse = purse
        self._courier = courier

    async def balance(self, url: URL) -> TabBalance | None:
        """What the wallet's tab for the service at `url` holds; None: no tab (or one
        the gateway no longer knows, now forgotten). ClientError on other answers."""
        stored = self._grants.find("GET", url, tab=True)
        if stored is None:
            return None
        where = url.origin().join(URL(TAB))
        headers = {"Authorization": f"Bearer {stored.token}"}
        async with self._client().get(where, headers=headers, allow_redirects=False) as resp:
            if resp.status == 401:
                self._grants.forget(stored)
                return None
            if resp.status != 200:
                problem = await problem_of(resp) or {}
                raise ClientError(
                    f"{where} answered {resp.status} "
                    f"({problem.get('reason') or resp.reason}): {problem.get('detail') or ''}"
                )
            body = json_object(await resp.json(content_type=None))
        balance = read_amount(body.get("balance_satoshis"))
        if balance is None:
            raise ClientError(f"{where} did not say what the tab holds")
        return TabBalance(
            tab=str(body.get("tab") or stored.tab),
            service=str(body.get("service") or stored.service),
            scope=str(body.get("scope") or stored.scope),
            satoshis=balance,
            expires=int(body.get("expires") or stored.expires),
        )

    async def top_up(self, url: URL, satoshis: int, method: str) -> TabBalance:
        """Pay at least `satoshis` into the tab of the service at `url` (as
        `PayingSession.top_up`, `method` upper case); ClientError if `method` `url`
        is not metered, PaymentRefused / PaymentNotSettled / SpendingLimitExceeded."""
        resp = await send(self._client(), method, url, CIMultiDict(), {}, allow_redirects=False)
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
        async with self._purse.lock(target, challenge):
            if self._grants.find("GET", target, tab=True) is not None:
                # The tab must still be good: a revoked tab's token is forgotten here.
                await self.balance(target)
            tab = self._grants.find("GET", target, tab=True)
            return await self._grants.with_tab(
                tab, lambda into: self._pay(method, target, challenge, price, into)
            )

    async def _pay(
        self, method: str, url: URL, challenge: Challenge, price: int, tab: StoredToken | None
    ) -> TabBalance:
        purse = self._purse

        def deliver(prepared: PreparedPayment, resent: bool) -> Awaitable[dict[str, Any]]:
            return self._courier.to_endpoint(method, url, challenge.pay_url, prepared, tab)

        grants: list[StoredToken | None] = []

        def keep(answer: dict[str, Any]) -> None:
            grants.append(self._grants.remember(url, token_in(answer)))

        purpose = purse.purpose(url, challenge, method, tab)
        prepared, answer = await purse.pay(url, purpose, price, self._client(), deliver, keep=keep)
        grant = grants[-1]
        purse.record(url, method, prepared, prepared.satoshis, "pay-endpoint", grant)
        about = json_object(answer.get("tab"))
        balance = read_amount(about.get("balance_satoshis"))
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

"""Which of the wallet's access tokens a request presents, and when one is dropped.

A grant bought once is presented as a Bearer token until it expires, so it
is never bought twice; a tab's token is presented on every route of its
service. A token the gateway refused itself (revoked, or its keys changed)
is forgotten; one that was only short (a tab run low) is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from multidict import CIMultiDict
from yarl import URL

from gateway.client.challenge import Challenge
from gateway.client.errors import PaymentRefused
from gateway.client.tokens import StoredToken, canonical_path, origin_of, read_token
from gateway.client.wallet import Wallet

T = TypeVar("T")

# Which stored token to present when several fit: the narrowest grant first.
_RANK = {"resource": 0, "route": 1, "tab": 2}


class Grants:
    """The access tokens kept in a wallet, as a paying session uses them."""

    def __init__(self, wallet: Wallet) -> None:
        self.wallet = wallet

    def find(self, method: str, url: URL, *, tab: bool | None = None) -> StoredToken | None:
        """The stored token to present for `method` `url`, None if none fits;
        `tab`: only tab tokens (True) or only grants (False)."""
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

    def remember(self, url: URL, token: str | None) -> StoredToken | None:
        """Keep the token the gateway at `url` issued; None (nothing kept) if it is
        absent or not a Farebox token."""
        grant = read_token(origin_of(url), token) if token else None
        if grant is not None:
            self.wallet.remember_token(grant)
        return grant

    def forget(self, stored: StoredToken) -> None:
        """Drop a token the gateway no longer takes."""
        self.wallet.forget_token(stored.token)

    async def with_tab(
        self, tab: StoredToken | None, attempt: Callable[[StoredToken | None], Awaitable[T]]
    ) -> T:
        """`attempt(tab)`, a payment into `tab` (None: a new tab, or no tab at all); if
        the gateway does not know `tab` (PaymentRefused "bad-tab"), it is forgotten
        and `attempt(None)` opens a new one. Other errors propagate."""
        try:
            return await attempt(tab)
        except PaymentRefused as exc:
            if tab is None or exc.reason != "bad-tab":
                raise
        self.forget(tab)
        return await attempt(None)


def refused(stored: StoredToken, challenge: Challenge) -> bool:
    """Was the token presented refused itself (revoked, unknown), not just short?"""
    if challenge.covers is not None and (stored.covers == "tab") != challenge.for_tab:
        return False  # a grant for priced routes on a metered one, or a tab's the other way
    if challenge.reason == "tab-exhausted":
        return False  # the tab is good, only low: it is topped up, not replaced
    return challenge.scope in (None, stored.scope)


def bearer(headers: CIMultiDict[str], token: StoredToken | None) -> CIMultiDict[str]:
    """`headers` with `Authorization: Bearer <token>` added (a copy); as they are if None."""
    if token is None:
        return headers
    with_token = headers.copy()
    with_token["Authorization"] = f"Bearer {token.token}"
    return with_token

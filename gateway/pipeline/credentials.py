"""Credentials a request presents: access and tab tokens (Bearer or cookie),
the token and cookie a payment hands back, and the revocation list.

Whether a grant found here opens the request is admission's decision
(payments/admission.py), the same for a token as for a payment. Token times
are checked with tokens.LEEWAY; a genuine token minted by an instance whose
clock runs further ahead is refused as `grant-not-yet-valid` (NotYetValid),
never as if it were unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict

from gateway.errors import PaymentError
from gateway.payments.admission import Revoked, Wanted, admit, covers
from gateway.payments.cashier import Accepted
from gateway.peer import PEER, Peer
from gateway.policy import Match
from gateway.store import StoreUnavailable
from gateway.tokens import LEEWAY, Grant, Tokens

log = logging.getLogger("farebox")

COOKIE = "farebox_token"
COOKIE_PAIR = COOKIE + "="
# RFC 6265 4.2.1 cookie-value, unquoted: one or more cookie-octets.
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")
TOKEN_HEADER = "X-Farebox-Token"
GRANT_HEADER = "X-Farebox-Grant"


@dataclass(frozen=True, slots=True)
class Admitted:
    grant: Grant
    upstream_header: str  # signed grant statement for the upstream
    paid: Accepted | None = None  # set when this very request carried the payment
    token: str = ""  # the token it was read from


def presented_tokens(request: web.BaseRequest) -> list[str]:
    found = []
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        found.append(auth[7:].strip())
    for header in request.headers.getall("Cookie", ()):
        if COOKIE_PAIR in header:
            found.extend(credential_cookies(header))
    return found


def credential_cookies(header: str) -> list[str]:
    """Every `farebox_token` in one Cookie header, read strictly (RFC 6265 4.2.1).

    Only a pair spelled `farebox_token=VALUE` counts: the name exactly (case
    and all), `=` right after it, a bare value of cookie-octets (no spaces,
    quotes, commas, semicolons or backslashes). Anything else (`farebox_token
    =T`, `FAREBOX_TOKEN=T`, `farebox_token="T"`) is no credential; the proxy
    keeps those from the upstream too. A browser sends one pair per matching
    path, so all are returned. Spaces around the `;` separators are allowed,
    as every parser does.
    """
    found = []
    for pair in header.split(";"):
        name, equals, value = pair.strip(" \t").partition("=")
        if name == COOKIE and equals and _COOKIE_VALUE.fullmatch(value):
            found.append(value)
    return found


class NotYetValid(PaymentError):
    """A genuine token for the request that opens later: its iat is more than
    LEEWAY seconds ahead of this clock (it was minted by an instance whose
    clock runs ahead). 402 `grant-not-yet-valid`: the client holds what it
    would buy, and must not pay again; `retry_after` says when it opens."""

    def __init__(self, opens: float) -> None:
        self.retry_after = max(1, math.ceil(opens - time.time()))
        super().__init__(
            "grant-not-yet-valid",
            "this token was issued by a gateway whose clock runs more than "
            f"{LEEWAY} s ahead of this one's; it opens in {self.retry_after} s: "
            "retry then, do not pay again",
        )


def covering(
    tokens: Tokens | None,
    request: web.BaseRequest,
    wanted: Wanted,
    kept: list[str] | None = None,
    *,
    decode: bool = True,
) -> list[Admitted]:
    """Every presented token, then every one in `kept`, whose grant covers the
    request (admission.covers), in that order.

    `kept` are those kept for the request's authenticated identity
    (`kept_for_peer`). With `decode` False no signature is checked: the
    list stops at the first token not verified before (`Tokens.known`),
    which the caller must then decide the long way, with `decode` True.
    Revocation is not asked here (`opened` asks it). Raises NotYetValid
    when none covers the request but a genuine one that does is not valid
    yet (a cached lookup: no decoding again).
    """
    if tokens is None:
        return []
    found: list[Admitted] = []
    early: float | None = None
    for token in presented_tokens(request) + (kept or []):
        if not decode and not tokens.known(token):
            break
        verified = tokens.verify(token)
        if verified is not None:
            if covers(verified[0], wanted):
                found.append(Admitted(*verified, token=token))
        elif early is None:
            pending = tokens.not_yet_valid(token)
            if pending is not None and covers(pending[0], wanted):
                early = pending[1]
    if not found and early is not None:
        raise NotYetValid(early)
    return found


@dataclass(frozen=True, slots=True)
class Opened:
    """What the tokens of a request decided (`opened`)."""

    admitted: Admitted | None  # the first whose grant opens the request
    refused: list[tuple[Admitted, PaymentError]]  # those before it that cover it but do not open it


async def opened(
    tokens: Tokens | None,
    request: web.BaseRequest,
    wanted: Wanted,
    revocations: Revoked | None,
    kept: list[str] | None = None,
    *,
    keeper: Keeper | None = None,
    decode: bool = True,
) -> Opened:
    """The first token (`covering`, in its order) whose grant `admit` opens.

    A covering token whose grant was revoked is passed over for the next,
    so a revoked grant's cookie sent before a valid one does not shut it
    out; each one refused is forgotten for the request's authenticated
    identity (`forget_for_peer` on `keeper`), and the refusals come back
    for the caller to say why when none opens. Raises NotYetValid as
    `covering` does, StoreUnavailable as `admit` does (the caller fails
    closed).
    """
    refused: list[tuple[Admitted, PaymentError]] = []
    for found in covering(tokens, request, wanted, kept, decode=decode):
        try:
            await admit(found.grant, wanted, revocations)
        except PaymentError as refusal:
            await forget_for_peer(keeper, found)
            refused.append((found, refusal))
            continue
        return Opened(found, refused)
    return Opened(None, refused)


class Keeper(Protocol):
    """What keeping grants for authenticated clients needs of the store."""

    async def bind(self, holder: str, token: str, expires: int) -> None: ...
    async def bound(self, holder: str) -> list[str]: ...


def _holder(peer: Peer, service: str, scope: str) -> str:
    # One list per thing bought (a resource, a route, the service's tab), so
    # no number of purchases can push out the grant of another.
    return f"peer:{peer.identity}:{service}:{scope}"


# Grants the store could not keep when they were bought (holder, token) ->
# expiry: kept again by the next request that finds the store back, and
# found here meanwhile, so a blip between taking a payment and keeping its
# grant does not make an AuthFetch client pay twice. Per process, bounded.
_UNKEPT: dict[tuple[str, str], int] = {}
MAX_UNKEPT = 10_000


async def kept_for_peer(store: Keeper | None, service: str, scope: str) -> list[str]:
    """The tokens kept for this request's BRC-103 identity for `scope` at `service`.

    `scope` is what a grant for the request would name (Match.scope, or the
    service's tab scope on a metered route); [] when the request is
    unsigned. A client that cannot hold tokens (AuthFetch keeps no cookies)
    is known by its identity key instead. Raises StoreUnavailable.
    """
    peer = PEER.get()
    if peer is None or store is None:
        return []
    holder = _holder(peer, service, scope)
    if _UNKEPT:
        await _keep_again(store)
    found = await store.bound(holder)
    return found + [token for (h, token) in _UNKEPT if h == holder and token not in found]


async def _keep_again(store: Keeper) -> None:
    now = time.time()
    for (holder, token), expires in list(_UNKEPT.items()):
        if expires > now:
            await store.bind(holder, token, expires)  # StoreUnavailable: try later
        del _UNKEPT[holder, token]


async def keep_for_peer(store: Keeper | None, accepted: Accepted) -> None:
    """Keep a grant just bought (or answered again) for this request's BRC-103 identity."""
    peer = PEER.get()
    if peer is None or store is None:
        return
    grant = accepted.grant
    holder = _holder(peer, grant.service, grant.scope)
    try:
        await store.bind(holder, accepted.token, grant.expires + LEEWAY)
    except StoreUnavailable:
        log.warning("could not keep a grant for an authenticated client yet: store unavailable")
        if len(_UNKEPT) < MAX_UNKEPT:
            _UNKEPT[holder, accepted.token] = grant.expires + LEEWAY


async def forget_for_peer(store: Keeper | None, admitted: Admitted) -> None:
    """Drop a kept token that no longer admits anything (revoked), so it
    cannot stand before the next grant its identity buys."""
    peer = PEER.get()
    if peer is None or store is None or not admitted.token:
        return
    grant = admitted.grant
    with contextlib.suppress(StoreUnavailable):
        await store.bind(_holder(peer, grant.service, grant.scope), admitted.token, 0)


def too_early(
    refuse: Callable[[web.BaseRequest, Match, NotYetValid], Awaitable[web.Response]],
    early: NotYetValid,
) -> Callable[[web.BaseRequest, Match], Awaitable[web.Response]]:
    """A 402 challenge (`refuse`: per grant or per tab) saying why: the token
    presented is genuine but not valid yet; Retry-After says when it opens."""

    async def answer(request: web.BaseRequest, match: Match) -> web.Response:
        response = await refuse(request, match, early)
        response.headers["Retry-After"] = str(early.retry_after)
        return response

    return answer


def tab_grant(tokens: Tokens | None, token: str) -> Grant | None:
    """The grant of a valid tab token, or None (times checked with LEEWAY).

    NotYetValid for a genuine tab token minted by a clock too far ahead: the
    caller must not treat its tab as unknown (the client would open a new
    tab, or forget the one it has).
    """
    verified = tokens.verify(token) if tokens is not None else None
    if verified is None:
        early = tokens.not_yet_valid(token) if tokens is not None else None
        if early is not None and early[0].covers == "tab" and early[0].tab:
            raise NotYetValid(early[1])
        return None
    if verified[0].covers != "tab" or not verified[0].tab:
        return None
    return verified[0]


def cookie_path(grant: Grant) -> str:
    """The narrowest path prefix the grant's cookie must be sent for."""
    if grant.covers == "resource":
        return grant.scope
    literal = []
    for segment in grant.scope.split("/")[1:]:
        if "*" in segment or "{" in segment:
            break
        literal.append(segment)
    return "/" + "/".join(literal)


def paid_upstream_header(tokens: Tokens, accepted: Accepted) -> str:
    """The grant header (GRANT_HEADER) for the upstream of a request that just paid."""
    if accepted.repeated:  # an earlier token: `verify` judges it when it comes
        return tokens.upstream_header(accepted.grant)
    return tokens.upstream_header_minted(accepted.token, accepted.grant)


def token_headers(accepted: Accepted, *, secure: bool, now: int) -> CIMultiDict[str]:
    """The token for the client: a header for scripts, a cookie for browsers.

    The Set-Cookie value (RFC 6265 section 4.1) is what `http.cookies`
    writes, attributes in its (sorted) order. A JWT's characters never need
    its quoting, so it is written straight, once per payment.
    """
    grant = accepted.grant
    token = accepted.token
    path = cookie_path(grant)
    max_age = max(0, grant.expires - now)
    if _JWT_CHARS.fullmatch(token):
        cookie = f"{COOKIE}={token}; HttpOnly; Max-Age={max_age}; Path={path}; SameSite=Lax"
        if secure:
            cookie += "; Secure"
    else:  # not a JWT: http.cookies says how it is quoted
        jar: SimpleCookie = SimpleCookie()
        jar[COOKIE] = token
        morsel = jar[COOKIE]
        morsel["path"] = path
        morsel["max-age"] = str(max_age)
        morsel["httponly"] = True
        morsel["samesite"] = "Lax"
        if secure:
            morsel["secure"] = True
        cookie = morsel.OutputString()
    return CIMultiDict({TOKEN_HEADER: token, "Set-Cookie": cookie})


_JWT_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")  # base64url segments and their dots


class RevocationList(Protocol):
    """What the revocation cache needs of the store."""

    async def revoked(self, grant_id: str) -> bool: ...


class Revocations:
    """Whether a grant was revoked, asked of the store at most once per `ttl`.

    The hot path (a valid token) would otherwise cost a store round trip per
    request; the price is that a revocation takes up to `ttl` seconds to reach
    every worker. StoreUnavailable propagates: the caller fails closed.

    One call per grant at a time: requests that find the answer due wait for
    the one call under way, not one call each. An answer in its last
    `REFRESH_AHEAD` of `ttl` is asked again in the background while it is
    still served, so a grant in steady use never waits on the store; an
    answer is never served past `ttl` after the call that fetched it began.
    """

    REFRESH_AHEAD = 0.25  # of ttl

    def __init__(self, store: RevocationList, ttl: float = 1.0, size: int = 100_000) -> None:
        self.store = store
        self.ttl = ttl
        self.size = size
        self._answers: dict[str, tuple[bool, float]] = {}
        self._asking: dict[str, asyncio.Task[bool]] = {}

    async def of(self, grant: Grant) -> bool:
        """Whether this grant, or the tab it draws on, was revoked."""
        return await self.revoked(grant.id) or (bool(grant.tab) and await self.revoked(grant.tab))

    async def revoked(self, grant_id: str) -> bool:
        hit = self._answers.get(grant_id)
        if hit is not None:
            left = hit[1] - time.monotonic()
            if left > 0:
                if left < self.ttl * self.REFRESH_AHEAD and grant_id not in self._asking:
                    self._ask(grant_id)  # served meanwhile: it is still within ttl
                return hit[0]
        asking = self._asking.get(grant_id) or self._ask(grant_id)
        return await asyncio.shield(asking)  # one caller cancelled must not cancel the rest

    def _ask(self, grant_id: str) -> asyncio.Task[bool]:
        task = asyncio.ensure_future(self._fetch(grant_id))
        self._asking[grant_id] = task
        task.add_done_callback(_retrieved)
        return task

    async def _fetch(self, grant_id: str) -> bool:
        began = time.monotonic()
        try:
            answer = await self.store.revoked(grant_id)
        finally:
            self._asking.pop(grant_id, None)
        if len(self._answers) >= self.size:
            self._answers.clear()  # crude but bounded; answers are cheap to refetch
        self._answers[grant_id] = (answer, began + self.ttl)
        return answer


def _retrieved(task: asyncio.Task[bool]) -> None:
    """A refresh nobody waited for may fail (the store down): the next caller
    asks again, in the foreground, and fails closed; nothing to report here."""
    if not task.cancelled():
        task.exception()

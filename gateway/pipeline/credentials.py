"""Getting into a priced route: an existing grant, or a payment on the request.

`admit` answers one question for a matched priced request: may it be proxied
now, and with which grant? A valid token (Bearer or cookie) for this very
resource admits it; otherwise BRC-121 payment headers are taken to the
cashier; otherwise there is nothing to admit and the caller challenges.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from http.cookies import SimpleCookie

from aiohttp import web
from multidict import CIMultiDict

from gateway.payments.cashier import Accepted, Cashier, TopUp, remittance
from gateway.policy import Match
from gateway.store import Store
from gateway.tokens import Grant, Tokens

COOKIE = "farebox_token"
TOKEN_HEADER = "X-Farebox-Token"
GRANT_HEADER = "X-Farebox-Grant"


@dataclass(frozen=True, slots=True)
class Admitted:
    grant: Grant
    upstream_header: str  # signed grant statement for the upstream
    paid: Accepted | None = None  # set when this very request carried the payment


def presented_tokens(request: web.BaseRequest) -> list[str]:
    found = []
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        found.append(auth[7:].strip())
    if COOKIE in request.cookies:
        # Browsers send one cookie per matching path; SimpleCookie keeps all.
        raw = request.headers.getall("Cookie", [])
        for header in raw:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(header)
            except Exception:
                continue
            for morsel in jar.values():
                if morsel.key == COOKIE:
                    found.append(morsel.value)
    return found


def by_token(tokens: Tokens, request: web.BaseRequest, match: Match) -> Admitted | None:
    for token in presented_tokens(request):
        verified = tokens.verify(token)
        if verified is None:
            continue
        grant, header = verified
        if grant.allows(match.service.name, request.method, match.resource, match.route.scope):
            return Admitted(grant, header)
    return None


def by_tab(tokens: Tokens, request: web.BaseRequest, match: Match) -> Admitted | None:
    """A tab token of this service, for a metered route."""
    for token in presented_tokens(request):
        verified = tokens.verify(token)
        if verified is None:
            continue
        grant, header = verified
        if grant.covers == "tab" and grant.tab and grant.service == match.service.name:
            return Admitted(grant, header)
    return None


def has_payment(request: web.BaseRequest) -> bool:
    return "x-bsv-beef" in request.headers


async def by_payment(
    cashier: Cashier,
    request: web.BaseRequest,
    match: Match,
    price: int,
    top_up: TopUp | None = None,
) -> Admitted:
    """Take the BRC-121 payment on this request; raises PaymentError."""
    h = request.headers
    payment = remittance(
        beef=h.get("x-bsv-beef"),
        sender=h.get("x-bsv-sender"),
        nonce=h.get("x-bsv-nonce"),
        time_ms=h.get("x-bsv-time"),
        vout=h.get("x-bsv-vout"),
        max_bytes=cashier.beef_limits.max_bytes,
    )
    accepted = await cashier.accept(payment, match, request.method, price, top_up)
    return Admitted(accepted.grant, cashier.tokens.upstream_header(accepted.grant), accepted)


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


def token_headers(accepted: Accepted, *, secure: bool, now: int) -> CIMultiDict[str]:
    """The token for the client: a header for scripts, a cookie for browsers."""
    grant = accepted.grant
    cookie: SimpleCookie = SimpleCookie()
    cookie[COOKIE] = accepted.token
    morsel = cookie[COOKIE]
    morsel["path"] = cookie_path(grant)
    morsel["max-age"] = str(max(0, grant.expires - now))
    morsel["httponly"] = True
    morsel["samesite"] = "Lax"
    if secure:
        morsel["secure"] = True
    return CIMultiDict({TOKEN_HEADER: accepted.token, "Set-Cookie": morsel.OutputString()})


class Revocations:
    """Whether a grant was revoked, asked of the store at most once per `ttl`.

    The hot path (a valid token) would otherwise cost a store round trip per
    request; the price is that a revocation takes up to `ttl` seconds to reach
    every worker. StoreUnavailable propagates: the caller fails closed.
    """

    def __init__(self, store: Store, ttl: float = 1.0, size: int = 100_000) -> None:
        self.store = store
        self.ttl = ttl
        self.size = size
        self._answers: dict[str, tuple[bool, float]] = {}

    async def of(self, grant: Grant) -> bool:
        """Whether this grant, or the tab it draws on, was revoked."""
        return await self.revoked(grant.id) or (bool(grant.tab) and await self.revoked(grant.tab))

    async def revoked(self, grant_id: str) -> bool:
        now = time.monotonic()
        hit = self._answers.get(grant_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        answer = await self.store.revoked(grant_id)
        if len(self._answers) >= self.size:
            self._answers.clear()  # crude but bounded; answers are cheap to refetch
        self._answers[grant_id] = (answer, now + self.ttl)
        return answer

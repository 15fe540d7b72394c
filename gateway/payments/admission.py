"""The one admission decision: may this grant open this request?

Asked of every grant, however it reached the gateway: a token (Bearer or
cookie), or a payment on any intake — new, or resent and answered from its
claim. A resent payment is answered with its grant only where that grant
would admit the request as a token (DESIGN.md, money rule 2); anywhere else
it is refused, so one payment buys one thing once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.errors import PaymentError
from gateway.policy import Match
from gateway.tokens import Grant


class Revoked(Protocol):
    """What admission needs of the revocation list."""

    async def of(self, grant: Grant) -> bool:
        """Whether the grant, or the tab it draws on, was revoked; may raise StoreUnavailable."""
        ...


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a request asks a grant for."""

    service: str
    method: str
    resource: str  # the canonical path asked for
    route_scope: str  # the matched route's pattern
    metered: bool  # a metered route: drawn from a tab of the service

    @classmethod
    def of(cls, match: Match, method: str) -> Wanted:
        return cls(
            match.service.name,
            method.upper(),
            match.resource,
            match.route.scope,
            match.route.route.meter is not None,
        )


def covers(grant: Grant, wanted: Wanted) -> bool:
    """Whether the grant is for this request: its service, method and resource, or its tab."""
    if wanted.metered:
        return grant.covers == "tab" and bool(grant.tab) and grant.service == wanted.service
    return grant.allows(wanted.service, wanted.method, wanted.resource, wanted.route_scope)


async def admit(grant: Grant, wanted: Wanted, revocations: Revoked | None) -> None:
    """Raise PaymentError (402) unless the grant opens the request.

    `payment-reused`: the grant is for something else (another method, route
    or service). `grant-revoked`: an admin revoked it or its tab.
    StoreUnavailable propagates: the caller fails closed (money rule 4).
    """
    if not covers(grant, wanted):
        raise PaymentError(
            "payment-reused",
            f"this payment bought {', '.join(grant.methods)} {grant.scope}, "
            f"not {wanted.method} {wanted.resource}",
        )
    if revocations is not None and await revocations.of(grant):
        what = "tab" if grant.tab else "grant"
        raise PaymentError("grant-revoked", f"this {what} was revoked; pay again for access")

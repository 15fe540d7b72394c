"""`GET /.well-known/farebox/tab`: what is left on the presented tab."""

from __future__ import annotations

from aiohttp import web

from gateway.edge.problems import answer, problem
from gateway.pipeline.credentials import presented_tokens, tab_grant
from gateway.pricing.tabs import sats
from gateway.services import Services


async def balance(services: Services, request: web.BaseRequest, _: str) -> web.Response:
    """The balance (satoshis and msat) of the tab whose token is presented (Bearer or cookie).

    The first presented tab token whose tab is not revoked answers. 401
    without a live tab token; StoreUnavailable propagates (503).
    """
    for token in presented_tokens(request):
        grant = tab_grant(services.tokens, token)
        if grant is None or services.tabs is None:
            continue
        if services.revocations is not None and await services.revocations.of(grant):
            continue  # passed over, as admission does (credentials.opened)
        left = await services.tabs.balance(grant.tab) or 0
        return answer(
            {
                "tab": grant.tab,
                "service": grant.service,
                "scope": grant.scope,
                "balance_satoshis": sats(left),
                "balance_msat": left,
                "expires": grant.expires,
            }
        )
    return problem(
        401,
        "no-tab",
        "No tab presented",
        "present a tab token (Authorization: Bearer) to see its balance",
        headers={"WWW-Authenticate": "Bearer"},
    )

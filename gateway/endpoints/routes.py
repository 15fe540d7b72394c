"""Farebox's own URLs as one route table (edge/urls.py names them).

A route is a path (or a path prefix whose rest the handler reads), the
methods it answers and a handler given the worker's Services. Handlers
raise errors as values; the listener that calls the router maps them to
problem+json in one place (pipeline/errors.py). The nginx auth_request
endpoint is added by the worker, which alone knows the gateway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from gateway.edge import urls
from gateway.edge.problems import problem
from gateway.endpoints import checkout, pay, payouts, prices, public, tab
from gateway.services import Services

Handler = Callable[[web.BaseRequest, str], Awaitable[web.StreamResponse]]
READ = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    methods: tuple[str, ...]  # ("*",) for any
    handler: Handler  # (request, the rest of the path after a prefix) -> answer
    prefix: bool = False  # `path` is a prefix; the handler gets what follows


class Router:
    """Finds the route of one of Farebox's own paths; 404 or 405 otherwise."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)

    def __call__(self, request: web.BaseRequest, path: str) -> Awaitable[web.StreamResponse]:
        allowed: list[str] = []
        for route in self.routes:
            if route.prefix:
                if not path.startswith(route.path) or path == route.path:
                    continue
            elif path != route.path:
                continue
            if route.methods[0] == "*" or request.method in route.methods:
                return route.handler(request, path[len(route.path) :] if route.prefix else "")
            allowed.extend(m for m in route.methods if m not in allowed)
        return _refuse(request, path, allowed)


async def _refuse(request: web.BaseRequest, path: str, allowed: list[str]) -> web.Response:
    if allowed:
        return problem(
            405,
            "method-not-allowed",
            "Method not allowed",
            f"{request.method} is not offered on {path}",
            headers={"Allow": ", ".join(allowed)},
        )
    return problem(404, "no-route", "Not found", f"no Farebox endpoint at {path}")


def table(services: Services, *extra: Route) -> Router:
    """Every endpoint, bound to the worker's services."""

    def bind(handler: Callable[..., Awaitable[web.StreamResponse]]) -> Handler:
        return partial(handler, services)

    return Router(
        (
            Route(urls.PAY, ("POST",), bind(pay.pay)),
            Route(urls.CHECKOUT, ("GET", "HEAD", "POST"), bind(checkout.handle), prefix=True),
            Route(urls.TAB, READ, bind(tab.balance)),
            Route(urls.RECEIPTS, READ, bind(public.receipt), prefix=True),
            Route(urls.TRANSPARENCY, READ, bind(public.transparency_report)),
            Route(urls.PRICES, READ, bind(prices.prices)),
            Route(urls.ASSETS + "/", READ, bind(public.asset), prefix=True),
            Route(urls.P2PKH, READ, bind(public.p2pkh), prefix=True),
            Route(urls.PAYOUTS, READ, bind(payouts.payout), prefix=True),
            Route(urls.JWKS, READ, bind(public.jwks)),
            Route(urls.PEER_AUTH, ("POST", "OPTIONS"), bind(public.handshake)),
            Route(urls.HEALTH, ("*",), bind(public.health)),
            Route(urls.READY, ("*",), bind(public.ready)),
            *extra,
        )
    )

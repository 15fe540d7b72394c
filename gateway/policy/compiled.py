"""A loaded policy, ready to answer "which route is this request?".

Services are picked by host and mount (a service bound to a host wins over a
catch-all; the longest mount wins), then the service's routes are tried in file
order and the first whose pattern and method both match wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.edge.paths import Target
from gateway.policy.concessions import Eligibility
from gateway.policy.patterns import Pattern
from gateway.policy.schema import Route, Service


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    route: Route
    pattern: Pattern
    scope: str  # the route's pattern as the client sees it (mount included)


@dataclass(frozen=True, slots=True)
class CompiledService:
    name: str
    service: Service
    routes: tuple[CompiledRoute, ...]
    prefix: str  # mount without trailing '/' ("" for "/"); lower case if case-insensitive
    upstream: str  # upstream base URL without trailing '/'


@dataclass(frozen=True, slots=True)
class Match:
    service: CompiledService
    route: CompiledRoute
    resource: str  # canonical path of what is asked for
    upstream_url: str  # encoded URL the proxy requests

    @property
    def scope(self) -> str:
        """What a grant for this request covers: the resource or the route."""
        grant = self.route.route.effective_grant
        return self.resource if grant.covers == "resource" else self.route.scope


@dataclass(frozen=True, slots=True)
class NoMatch:
    allowed: tuple[str, ...]  # methods that would match this path; empty: none


@dataclass(frozen=True, slots=True)
class Policy:
    services: tuple[CompiledService, ...]  # in selection order
    unmatched: int
    sources: tuple[str, ...]
    version: str  # content hash, so admins can tell which policy is live
    concessions: dict[str, Eligibility] = field(default_factory=dict)

    def match(self, host: str | None, target: Target, method: str) -> Match | NoMatch:
        name = _host_name(host)
        path = target.path
        for svc in self.services:
            if svc.service.host is not None and svc.service.host != name:
                continue
            prefix = svc.prefix
            if prefix:
                head = path if svc.service.case_sensitive else path.lower()
                if not (head == prefix or head.startswith(prefix + "/")):
                    continue
            rel = path[len(prefix) :]
            allowed: list[str] = []
            for compiled in svc.routes:
                if compiled.pattern.regex.fullmatch(rel) is None:
                    continue
                if compiled.route.allows(method):
                    url = svc.upstream + target.forward[len(prefix) :]
                    if target.query:
                        url += "?" + target.query
                    return Match(svc, compiled, path, url)
                allowed.extend(m for m in compiled.route.methods if m not in allowed)
            return NoMatch(tuple(allowed))
        return NoMatch(())


def _host_name(host: str | None) -> str | None:
    if not host:
        return None
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    return host.rpartition(":")[0].lower() if ":" in host else host.lower()

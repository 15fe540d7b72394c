"""A loaded policy, ready to answer "which route is this request?".

Services are picked by host and mount (a service bound to a host wins over a
catch-all; the longest mount wins). Then the service's routes are tried in file
order: the first whose pattern matches the path decides which routes may answer
— it and later routes with the same pattern — and the first of those that takes
the method wins. A path they match but whose method none takes is 405 with
`Allow`: a later, wider route (a catch-all) never answers a method an earlier
route refused, so a priced path cannot be reached free by another method.

Case-insensitive services fold ASCII letters only: a character whose Unicode
folding lands in ASCII (KELVIN SIGN to k) or changes length matches nothing,
so the path matched and the path forwarded are one form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.edge.hosts import host_name
from gateway.edge.paths import PathError, Target
from gateway.policy.concessions import Eligibility
from gateway.policy.patterns import Pattern
from gateway.policy.schema import Route, Service
from gateway.policy.source import Issue


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
    notes: tuple[Issue, ...] = ()  # not errors: what an admin should know (policy check)

    @property
    def folds(self) -> bool:
        """Whether some service matches paths case-insensitively."""
        return any(not s.service.case_sensitive for s in self.services)

    def match(self, host: str | None, target: Target, method: str) -> Match | NoMatch:
        """The route for this request, or NoMatch (with the methods the path takes).

        Raises HostError for a Host header that names no host one way.
        """
        name = host_name(host)
        path = target.path
        if self.folds and not path.isascii():
            _refuse_case_twins(path)
        for svc in self.services:
            if svc.service.host is not None and svc.service.host != name:
                continue
            prefix = svc.prefix
            if prefix:
                head = path if svc.service.case_sensitive else path.translate(ASCII_LOWER)
                if not (head == prefix or head.startswith(prefix + "/")):
                    continue
            rel = path[len(prefix) :]
            allowed: list[str] = []
            decided: str | None = None  # the pattern of the first route that matched the path
            for compiled in svc.routes:
                regex = compiled.pattern.regex
                if decided is not None and regex.pattern != decided:
                    continue
                if regex.fullmatch(rel) is None:
                    continue
                if compiled.route.allows(method):
                    # The mount is ASCII and matched letter for letter, so it
                    # spans as many characters in the encoded path.
                    url = svc.upstream + target.forward[len(prefix) :]
                    if target.query:
                        url += "?" + target.query
                    return Match(svc, compiled, path, url)
                decided = regex.pattern
                allowed.extend(m for m in compiled.route.methods if m not in allowed)
            return NoMatch(tuple(allowed))
        return NoMatch(())


def _refuse_case_twins(path: str) -> None:
    """Raise PathError for a character some case-insensitive upstream reads as ASCII.

    Farebox folds A-Z only, but Java's toLowerCase, Go's EqualFold and
    Spring's case-insensitive patterns fold KELVIN SIGN to k, LONG S to s,
    dotless i to i: such a path could match a free route here and a priced
    one there. Characters whose case mapping lands in ASCII or changes
    length have no one reading, so they are refused.
    """
    for char in path:
        if char.isascii():
            continue
        for mapped in (char.lower(), char.upper(), char.casefold()):
            if len(mapped) != 1 or mapped.isascii():
                raise PathError(
                    "ambiguous-case",
                    f"{char!r} (U+{ord(char):04X}) folds into other letters under some "
                    "case-insensitive matchers",
                )


# Case-insensitive matching folds A-Z only (str.lower folds KELVIN SIGN to k).
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

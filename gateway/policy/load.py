"""Reading a policy directory (or one file) into a compiled `Policy`.

Every file is parsed and validated, then the files are checked together
(service names, host+mount pairs, `unmatched` set once) and every service's
routes are checked for duplicates and routes an earlier one makes unreachable.
All problems are collected, so one `farebox policy check` run shows them all.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.policy.compiled import ASCII_LOWER, CompiledRoute, CompiledService, Policy
from gateway.policy.concessions import load as load_concession
from gateway.policy.patterns import Pattern, compile_pattern, shadows
from gateway.policy.schema import Budget, PolicyFile, Reward, Route, Service
from gateway.policy.source import Document, Issue, PolicyError, parse

SUFFIXES = (".yaml", ".yml")


def policy_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
    return [path]


def load_policy(path: str | Path) -> Policy:
    """Load and compile; raise PolicyError listing every problem found."""
    path = Path(path)
    if not path.exists():
        raise PolicyError([Issue(str(path), 0, "", "no such file or directory")])
    files = policy_files(path)
    if not files:
        raise PolicyError([Issue(str(path), 0, "", "no *.yaml policy files in this directory")])
    issues: list[Issue] = []
    notes: list[Issue] = []
    docs: list[tuple[Document, PolicyFile]] = []
    digest = hashlib.sha256()
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            issues.append(Issue(str(file), 0, "", f"cannot read: {exc}"))
            continue
        digest.update(file.name.encode() + b"\0" + text.encode() + b"\0")
        try:
            doc = parse(str(file), text)
        except PolicyError as exc:
            issues.extend(exc.issues)
            continue
        model = _validate(doc, issues)
        if model is not None:
            docs.append((doc, model))
    services = _compile(docs, issues, notes)
    concessions = _concessions(docs, issues)
    if not services and not concessions and not issues:
        # Empty files, or only comments: nothing would be served.
        where = str(path)
        issues.append(
            Issue(where, 0, "", "no services: a policy needs at least one under 'services:'")
        )
    if issues:
        raise PolicyError(issues)
    unmatched = next((m.unmatched for _, m in docs if m.unmatched is not None), 404)
    sources = tuple(str(f) for f in files)
    version = digest.hexdigest()[:12]
    return Policy(services, unmatched, sources, version, concessions, tuple(notes))


def _concessions(docs: list[tuple[Document, PolicyFile]], issues: list[Issue]) -> dict[str, Any]:
    """Load every concession's issuer keys; check that routes name real ones."""
    loaded: dict[str, Any] = {}
    where: dict[str, str] = {}
    givers: dict[str, bool] = {}
    for doc, model in docs:
        for name, concession in model.concessions.items():
            loc = ("concessions", name)
            if name in where:
                issues.append(
                    doc.issue(loc, f"concession {name!r} is already defined at {where[name]}")
                )
                continue
            where[name] = f"{doc.file}:{doc.line_of(loc)}"
            givers[name] = concession.gives
            try:
                loaded[name] = load_concession(name, concession, Path(doc.file).parent)
            except ValueError as exc:
                issues.append(doc.issue(loc, str(exc)))
    for doc, model in docs:
        for service_name, service in model.services.items():
            for i, route in enumerate(service.routes):
                loc = ("services", service_name, "routes", i, "concessions")
                for name in route.concessions:
                    if name not in where:
                        known = ", ".join(sorted(where)) or "none defined"
                        issues.append(
                            doc.issue(loc, f"unknown concession {name!r} (known: {known})")
                        )
                    elif not givers.get(name, True):
                        issues.append(
                            doc.issue(
                                loc,
                                f"concession {name!r} gives no discount nor free_quota: "
                                "it can only prove eligibility for a reward",
                            )
                        )
                if route.concessions and route.price.free:
                    issues.append(doc.issue(loc, "a free route has nothing to discount"))
                if route.reward is not None:
                    at = ("services", service_name, "routes", i, "reward", "requires")
                    for name in route.reward.requires:
                        if name not in where:
                            known = ", ".join(sorted(where)) or "none defined"
                            issues.append(
                                doc.issue(at, f"unknown concession {name!r} (known: {known})")
                            )
    _campaigns(docs, issues)
    return loaded


def _campaigns(docs: list[tuple[Document, PolicyFile]], issues: list[Issue]) -> None:
    """A reward campaign is one budget: named by one route only."""
    where: dict[str, str] = {}
    for doc, model in docs:
        for service_name, service in model.services.items():
            for i, route in enumerate(service.routes):
                if route.reward is None:
                    continue
                loc = ("services", service_name, "routes", i, "reward")
                name = route.reward.campaign
                if name in where:
                    issues.append(
                        doc.issue(loc, f"campaign {name!r} is already rewarded at {where[name]}")
                    )
                    continue
                where[name] = f"{doc.file}:{doc.line_of(loc)}"


def _validate(doc: Document, issues: list[Issue]) -> PolicyFile | None:
    if doc.data is None:
        return PolicyFile()
    if not isinstance(doc.data, dict):
        issues.append(doc.issue((), "a policy file is a mapping with 'services:'"))
        return None
    try:
        return PolicyFile.model_validate(doc.data)
    except ValidationError as exc:
        for err in exc.errors():
            issues.append(doc.issue(err["loc"], _message(err, doc)))
        return None


def _message(err: dict, doc: Document) -> str:
    loc, kind = err["loc"], err["type"]
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1], doc)
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suffix = f" (did you mean {hint[0]!r}?)" if hint else f" (allowed: {', '.join(known)})"
        return f"unknown key {loc[-1]!r}{suffix}"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


def _known_keys(parent: tuple, doc: Document) -> list[str]:
    # Which model the parent location is: services.<name> → Service, and so on.
    if not parent:
        return list(PolicyFile.model_fields)
    if parent[0] == "services" and len(parent) == 2:
        return list(Service.model_fields)
    if len(parent) == 4 and parent[2] == "routes":
        return list(Route.model_fields)
    if len(parent) == 5 and parent[-1] == "grant":
        return ["lasts", "covers"]
    if len(parent) == 5 and parent[-1] == "free_quota":
        return ["requests", "per", "by"]
    if len(parent) == 5 and parent[-1] == "reward":
        return list(Reward.model_fields)
    if len(parent) == 6 and parent[-1] == "budget":
        return list(Budget.model_fields)
    return []


def _compile(
    docs: list[tuple[Document, PolicyFile]], issues: list[Issue], notes: list[Issue]
) -> tuple[CompiledService, ...]:
    seen_names: dict[str, str] = {}
    seen_mounts: dict[tuple[str | None, str], str] = {}
    unmatched_at: str | None = None
    compiled: list[CompiledService] = []
    for doc, model in docs:
        if model.unmatched is not None:
            where = f"{doc.file}:{doc.line_of(('unmatched',))}"
            if unmatched_at:
                issues.append(
                    doc.issue(("unmatched",), f"'unmatched' is already set at {unmatched_at}")
                )
            unmatched_at = where
        for name, service in model.services.items():
            loc = ("services", name)
            where = f"{doc.file}:{doc.line_of(loc)}"
            if name in seen_names:
                issues.append(
                    doc.issue(loc, f"service {name!r} is already defined at {seen_names[name]}")
                )
                continue
            seen_names[name] = where
            key = (service.host, service.mount)
            if key in seen_mounts:
                issues.append(
                    doc.issue((*loc, "mount"), f"same host and mount as service {seen_mounts[key]}")
                )
            seen_mounts[key] = f"{name!r} at {doc.file}:{doc.line_of((*loc, 'mount'))}"
            routes = _compile_routes(doc, loc, service, issues)
            notes.extend(_not_caught(doc, loc, routes, service.case_sensitive))
            prefix = "" if service.mount == "/" else service.mount
            if not service.case_sensitive:
                prefix = prefix.translate(ASCII_LOWER)
            compiled.append(CompiledService(name, service, routes, prefix, service.upstream))
    # Bound to a host first, then the most specific (longest) mount.
    compiled.sort(key=lambda s: (s.service.host is None, -len(s.prefix)))
    return tuple(compiled)


def _compile_routes(
    doc: Document, loc: tuple, service: Service, issues: list[Issue]
) -> tuple[CompiledRoute, ...]:
    out: list[CompiledRoute] = []
    case = service.case_sensitive
    prefix = "" if service.mount == "/" else service.mount
    for i, route in enumerate(service.routes):
        rloc = (*loc, "routes", i)
        pattern = compile_pattern(route.path, case_sensitive=case)  # syntax checked by schema
        if route.price.free and route.grant is not None:
            issues.append(doc.issue((*rloc, "grant"), "a free route has nothing to grant"))
        for j, earlier in enumerate(out):
            problem = _conflict(earlier, route, pattern, case)
            if problem:
                line = doc.line_of((*loc, "routes", j))
                issues.append(doc.issue((*rloc, "path"), f"{problem} by the route at line {line}"))
                break
        out.append(CompiledRoute(route, pattern, prefix + route.path))
    return tuple(out)


def _not_caught(
    doc: Document, loc: tuple, routes: tuple[CompiledRoute, ...], case: bool
) -> list[Issue]:
    """Notes for `policy check`: what a later, wider route does not catch.

    The first route whose pattern matches a path decides it (compiled.py):
    methods it does not take answer 405 there, even when a later catch-all
    takes them.
    """
    found = []
    for j, wide in enumerate(routes):
        for i, narrow in enumerate(routes[:j]):
            if narrow.pattern.regex.pattern == wide.pattern.regex.pattern:
                continue
            if not shadows(wide.pattern, narrow.pattern, case_sensitive=case):
                continue
            if narrow.route.methods[0] == "*":
                continue
            if wide.route.methods[0] == "*":
                extra = "any other method"
            else:
                missing = [m for m in wide.route.methods if m not in narrow.route.methods]
                if not missing:
                    continue
                extra = ", ".join(missing)
            line = doc.line_of((*loc, "routes", i))
            found.append(
                doc.issue(
                    (*loc, "routes", j, "path"),
                    f"{wide.scope} does not catch {extra} on {narrow.scope}: the route at "
                    f"line {line} decides those paths and answers 405 "
                    f"(Allow: {', '.join(narrow.route.methods)})",
                )
            )
    return found


def _conflict(earlier: CompiledRoute, route: Route, pattern: Pattern, case: bool) -> str | None:
    a, b = earlier.route, route
    same = a.path == b.path if case else a.path.lower() == b.path.lower()
    if same and (a.methods[0] == "*" or b.methods[0] == "*" or set(a.methods) & set(b.methods)):
        return "duplicate route: same path and method already handled"
    covers_methods = a.methods[0] == "*" or (
        b.methods[0] != "*" and set(b.methods) <= set(a.methods)
    )
    if covers_methods and shadows(earlier.pattern, pattern, case_sensitive=case):
        return "unreachable route: every request it matches is taken first"
    return None

"""Property: what the upstream receives is what the gateway decided, never a priced
route without a grant (issue: the edge holds, standing defences).

Hypothesis generates policies (mounts, case folding, host binding, routes of
mixed price and methods), request targets (odd case, Unicode letters that fold
to ASCII, dot segments, encodings) and Host spellings, and sends them as raw
bytes to a real gateway in front of a real recording upstream, with no token.
For every request the upstream receives, its own view — the path it got (with
the service's mount put back) and the Host the client named — must match a
*free* route, and the same one the gateway matched; and that path must already
be canonical, so no resolver downstream reads it another way.

`FAREBOX_PROPERTY_EXAMPLES=2000 ./dev test tests/test_routing_property.py`
runs a longer search than the suite's default.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from gateway.edge.hosts import HostError, host_name
from gateway.edge.paths import canonicalize
from gateway.policy import Policy, PolicyError, load_policy
from gateway.policy.patterns import compile_pattern
from gateway.policy.reload import PolicyHolder
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import assemble_gateway
from gateway.services import Services
from gateway.store.memory import MemoryStore

EXAMPLES = int(os.environ.get("FAREBOX_PROPERTY_EXAMPLES", "60"))
SERVER_KEY = "02" + "11" * 32

MOUNTS = ["/", "/k", "/k/premium", "/premium", "/a/b"]
PATTERNS = ["/**", "/doc", "/{n}", "/x/*", "/premium/**", "/*.pdf", "/k/**"]
METHODS = [("GET", "HEAD"), ("POST",), "*"]
# Plain segments most of the time, so that requests reach routes; the odd ones
# (Unicode that folds to ASCII, dot segments, encodings) often enough to matter.
PLAIN = ["k", "K", "premium", "Premium", "doc", "x", "a", "b", "f.pdf", "PREMIUM"]
ODD = ["%E2%84%AA", "%C4%B0", "%6B", "%70remium", "%2e", ".", "..", "", "%2F", "%41"]
HOSTS = ["paid.test", "PAID.test.", "paid.test:8080", "other.test", "[::1]", "paid..test"]


@st.composite
def services(draw: st.DrawFn) -> str:
    lines = ["services:"]
    for i in range(draw(st.integers(1, 3))):
        lines += [
            f"  s{i}:",
            "    upstream: {upstream}",
            f"    mount: {draw(st.sampled_from(MOUNTS))}",
        ]
        if draw(st.booleans()):
            lines.append("    case_sensitive: false")
        if draw(st.booleans()):
            lines.append("    host: paid.test")
        if draw(st.booleans()):
            lines.append("    preserve_host: true")
        lines.append("    routes:")
        for pattern in draw(
            st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3, unique=True)
        ):
            methods = draw(st.sampled_from(METHODS))
            lines.append(f"      - path: '{pattern}'")
            lines.append(
                "        methods: " + ('"*"' if methods == "*" else f"[{', '.join(methods)}]")
            )
            if draw(st.booleans()):
                lines.append("        price: free")
            else:
                lines += ["        price: 10", "        grant: {lasts: 1h}"]
    return "\n".join(lines) + "\n"


segment = st.one_of(st.sampled_from(PLAIN), st.sampled_from(PLAIN), st.sampled_from(ODD))
# A mount as clients may spell it, then what follows it.
HEADS = ["", "/k", "/K", "/k/premium", "/K/PREMIUM", "/premium", "/Premium", "/a/b", "/A/b",
         "/%E2%84%AA", "/%E2%84%AA/premium", "/%6B/premium"]  # fmt: skip
requests = st.tuples(
    st.tuples(st.sampled_from(HEADS), st.lists(segment, min_size=1, max_size=3)).map(
        lambda parts: parts[0] + "/" + "/".join(parts[1])
    ),
    st.one_of(st.sampled_from(HOSTS[:4]), st.sampled_from(HOSTS)),
    st.sampled_from(["GET", "GET", "POST", "DELETE"]),
)


@dataclass
class Received:
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # method, raw path, Host


async def _send(port: int, method: str, target: str, host: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1])


async def _check(policy_text: str, sent: list[tuple[str, str, str]]) -> None:
    received = Received()

    async def record(request: web.BaseRequest) -> web.Response:
        received.seen.append((request.method, request.raw_path, request.headers.get("Host", "")))
        return web.Response(text="upstream")

    upstream = web.ServerRunner(web.Server(record), access_log=None)
    await upstream.setup()
    await web.TCPSite(upstream, "127.0.0.1", 0).start()
    upstream_url = f"http://127.0.0.1:{upstream.addresses[0][1]}"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "p.yaml").write_text(policy_text.replace("{upstream}", upstream_url))
        try:
            policy = load_policy(folder)
        except PolicyError:
            await upstream.cleanup()
            assume(False)  # an invalid policy: nothing to serve
        proxy = Proxy(connect_timeout=2, read_timeout=5)
        await proxy.start()
        services = Services(PolicyHolder.load(Path(folder)), SERVER_KEY, store=MemoryStore())
        runner = web.ServerRunner(
            web.Server(assemble_gateway(services, proxy).handle), access_log=None
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            for target, host, method in sent:
                before = len(received.seen)
                status = await _send(port, method, target, host)
                if len(received.seen) == before:
                    event(f"answered by the gateway: {status}")
                    continue  # decided at the gateway: nothing reached the upstream
                event("proxied")
                assert 200 <= status < 300, (target, host, method, status)
                _, raw_path, _ = received.seen[-1]
                path = canonicalize(target).path
                answer = reference(policy, host, path, method)
                assert answer is not None, (
                    "proxied, but the rules answer 4xx",
                    target,
                    host,
                    method,
                )
                svc, route = answer
                assert route.route.price.free, (
                    "a priced route proxied unpaid",
                    target,
                    host,
                    method,
                )
                # The upstream gets the path matched, less the mount: one form, no second reading.
                assert canonicalize(raw_path).forward == raw_path, ("not canonical", raw_path)
                rest = path[len(svc.prefix) :] or "/"
                assert canonicalize(raw_path).path == rest, (
                    "forwarded another path",
                    target,
                    raw_path,
                )
        finally:
            await runner.cleanup()
            await proxy.close()
            await upstream.cleanup()


def reference(policy: Policy, host: str, path: str, method: str) -> tuple[Any, Any] | None:
    """The README's routing rules written plainly, apart from the matcher: the
    (service, route) that answers, or None for a 4xx.

    Host: case, port and a trailing dot do not matter. Mount: ASCII letters
    fold when the service is case-insensitive (bytes.lower folds nothing
    else). Routes: the first whose pattern matches decides the path; it and
    routes with the same pattern answer the methods they take.
    """
    name = host.rpartition(":")[0] if ":" in host and not host.endswith("]") else host
    name = name.lower().removesuffix(".")
    for svc in policy.services:
        if svc.service.host is not None and svc.service.host != name:
            continue
        fold = not svc.service.case_sensitive
        head = _ascii_lower(path) if fold else path
        if svc.prefix and not (head == svc.prefix or head.startswith(svc.prefix + "/")):
            continue
        rel = head[len(svc.prefix) :]
        deciding = None
        for route in svc.routes:
            source = _ascii_lower(route.route.path) if fold else route.route.path
            if deciding is not None and source != deciding:
                continue
            if compile_pattern(source).regex.fullmatch(rel) is None:
                continue
            deciding = source
            if route.route.methods[0] == "*" or method in route.route.methods:
                return svc, route
        return None
    return None


def _ascii_lower(text: str) -> str:
    return text.encode("utf-8", "surrogatepass").lower().decode("utf-8", "surrogatepass")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(policy=services(), sent=st.lists(requests, min_size=1, max_size=8))
def test_the_upstream_receives_what_was_decided_and_never_a_priced_route(
    policy: str, sent: list[tuple[str, str, str]]
) -> None:
    asyncio.run(_check(textwrap.dedent(policy), sent))


def test_host_spellings_read_one_way() -> None:
    for spelling in HOSTS:
        try:
            name = host_name(spelling)
        except HostError:
            continue
        assert name == host_name(name)  # a fixed point: no second reading

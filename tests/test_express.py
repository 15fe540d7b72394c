"""The express path (Gateway._express, Proxy.express): a lane request with a
token that admits it, or to a free route without a quota, is answered in one
coroutine, byte for byte as the pipeline answers it, with the same upstream
request; anything else goes the long way and is decided there."""

from __future__ import annotations

import asyncio
import logging
import re
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from gateway.edge import metrics
from gateway.edge.protocol import ProblemServer
from gateway.ledger.tally import Tally, today
from gateway.pipeline.credentials import Revocations
from gateway.pipeline.gateway import Gateway
from gateway.policy.reload import PolicyHolder
from gateway.proxy.forward import SMALL_BODY, Proxy
from gateway.serve.assemble import assemble_gateway
from gateway.services import Services
from gateway.store.memory import MemoryStore
from gateway.tokens import Grant, KeyRing, Tokens
from tests.conftest import SERVER_KEY
from tests.listeners import listening

BIG = b"x" * (SMALL_BODY + 10)
# What the raw upstream answers, by the last segment of the path.
ANSWERS = {
    "plain": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "typed": b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: 4\r\n\r\na,b\n",
    "dated": b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
    "empty": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "chunked-empty": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "cached": (
        b"HTTP/1.1 200 OK\r\nCache-Control: public, s-maxage=600, max-age=60\r\n"
        b'Vary: Accept\r\nSurrogate-Control: max-age=9\r\nETag: "e"\r\n'
        b"Content-Length: 2\r\n\r\nok"
    ),
    "forged": (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: farebox_token=junk\r\nSet-Cookie: a=1\r\n"
        b"X-Farebox-Token: junk\r\nPayment-Required: x\r\nX-Request-Id: theirs\r\n"
        b"Server: upstream/1.0\r\nContent-Length: 2\r\n\r\nok"
    ),
    "hop": (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n"
        b"Keep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok"
    ),
    "odd-bytes": b"HTTP/1.1 200 \xffWeird\r\nX-Odd: \xff\xfe\r\nContent-Length: 2\r\n\r\nok",
    "noreason": b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
    "created": b"HTTP/1.1 201 Created\r\nLocation: /r/1\r\nContent-Length: 2\r\n\r\nok",
    "missing": b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nnope",
    "broken": b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 2\r\n\r\nno",
    "nocontent": b"HTTP/1.1 204 No Content\r\n\r\n",
    "notmodified": b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\n\r\n',
    "big": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(BIG), BIG),
    "untilclose": b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    "units": b"HTTP/1.1 200 OK\r\nX-Usage-Units: 3\r\nContent-Length: 2\r\n\r\nok",
}

POLICY = """\
services:
  raw:
    upstream: {upstream}
    routes:
      - path: /r/{{name}}
        price: 100
        grant: {{lasts: 10m, covers: route}}
      - path: /other/{{name}}
        price: 100
        grant: {{lasts: 10m, covers: route}}
      - path: /m/{{name}}
        price: 10
        meter: {{per: request}}
      - path: /u/{{name}}
        price: 150
        meter: {{per: unit, most: 5}}
      - path: /b/{{name}}
        price: 8
        meter: {{per: mb, most: 2}}
      - path: /f/{{name}}
        price: free
      - path: /q/{{name}}
        price: free
        free_quota: {{requests: 1000, per: 1d}}
    tabs: {{top_up: 1000, lasts: 1d}}
"""


@dataclass
class Raw:
    url: str
    heads: list[bytes] = field(default_factory=list)


async def serve_raw(raw: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            raw.heads.append(head)
            name = head.split(b" ", 2)[1].decode().rsplit("/", 1)[-1].partition("?")[0]
            answer = ANSWERS.get(name, ANSWERS["plain"])
            if head.startswith(b"HEAD ") and b"Content-Length" in answer:
                answer = answer.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
            writer.write(answer)
            await writer.drain()
            if answer.startswith(b"HTTP/1.0"):
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[Raw]:
    found = Raw("")
    server = await asyncio.start_server(lambda r, w: serve_raw(found, r, w), "127.0.0.1", 0)
    found.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield found
    server.close()


@dataclass
class Lanes:
    express: int  # the gateway with its express path
    slow: int  # the same services, every request through the pipeline
    gateway: Gateway
    taken: list[bool]  # per express attempt: answered there, or handed on
    tokens: Tokens
    folder: Path
    store: MemoryStore

    def token(self, scope: str = "/r/{name}", methods: tuple[str, ...] = ("GET", "HEAD")) -> str:
        return self.seen(
            self.tokens.mint(
                Grant(
                    id=uuid.uuid4().hex,
                    service="raw",
                    scope=scope,
                    covers="route",
                    methods=methods,
                    expires=int(time.time()) + 600,
                    txid="00" * 32,
                    satoshis=100,
                    payer="ab" * 16,
                )
            )
        )

    def seen(self, token: str) -> str:
        """The token as a gateway holds one it verified before (its first request)."""
        self.tokens.verify(token)
        return token

    def tab_token(self, tab: str) -> str:
        return self.seen(self.tokens.mint(tab_grant(tab)))


def tab_grant(tab: str) -> Grant:
    """A grant of the raw service's tab `tab`, lasting ten minutes."""
    return Grant(
        id=uuid.uuid4().hex,
        service="raw",
        scope="/**",
        covers="tab",
        methods=("*",),
        expires=int(time.time()) + 600,
        txid="00" * 32,
        satoshis=1000,
        payer="ab" * 16,
        tab=tab,
    )


@pytest.fixture
async def lanes(tmp_path: Path, raw: Raw) -> AsyncIterator[Lanes]:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(textwrap.dedent(POLICY.format(upstream=raw.url)))
    proxy = Proxy(connect_timeout=1, read_timeout=2)
    await proxy.start()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    proxy.own_token = tokens.issued_here
    store = MemoryStore()
    services = Services(
        PolicyHolder.load(folder),
        SERVER_KEY,
        store=store,
        tokens=tokens,
        tally=Tally(store),
        revocations=Revocations(store, ttl=0.001),
    )
    gateway = assemble_gateway(services, proxy)
    slow = assemble_gateway(services, proxy)
    slow._express_match = lambda request: None  # type: ignore[method-assign]
    taken: list[bool] = []
    original = gateway._express

    async def spy(request, match):  # type: ignore[no-untyped-def]
        answer = await original(request, match)
        taken.append(answer is not None)
        return answer

    gateway._express = spy  # type: ignore[method-assign]
    runners, ports = [], []
    for gw in (gateway, slow):
        server = ProblemServer(gw.handle, lane=gw.takes, access_log=None)
        runner = web.ServerRunner(server)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        ports.append(runner.addresses[0][1])
    yield Lanes(ports[0], ports[1], gateway, taken, tokens, folder, store)
    for runner in runners:
        await runner.cleanup()
    await proxy.close()


async def exchange(
    port: int,
    data: bytes,
    local: str = "127.0.0.1",
    *,
    half_close: bool = False,
    quiet: float = 0.5,
) -> bytes:
    """Send `data` (then half-close, if asked); what came back until the
    close or `quiet` seconds of quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    writer.write(data)
    if half_close:
        writer.write_eof()
    got = b""
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 20), quiet)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        writer.close()
    return got


def masked(data: bytes) -> bytes:
    """Date and request id vary from one answer to the next."""
    data = re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", data)
    return re.sub(rb"\r\nX-Request-Id: [0-9a-f]{16}\r\n", b"\r\nX-Request-Id: -\r\n", data)


FORMS = {
    "1.1": b"GET /r/{name} HTTP/1.1\r\nHost: a\r\n{auth}\r\n",
    "1.1-close": b"GET /r/{name} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{auth}\r\n",
    "1.0": b"GET /r/{name} HTTP/1.0\r\nHost: a\r\n{auth}\r\n",
    "1.0-keep": b"GET /r/{name} HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n{auth}\r\n",
    "head": b"HEAD /r/{name} HTTP/1.1\r\nHost: a\r\n{auth}\r\n",
    "cookie-id": (
        b"GET /r/{name} HTTP/1.1\r\nHost: a\r\nX-Request-Id: mine-1\r\nAccept: */*\r\n"
        b"User-Agent: t\r\n{auth}\r\n"
    ),
}


def request(form: str, name: str, token: str) -> bytes:
    auth = (
        f"Cookie: a=b; farebox_token={token}\r\n"
        if form == "cookie-id"
        else f"Authorization: Bearer {token}\r\n"
    )
    return FORMS[form].replace(b"{name}", name.encode()).replace(b"{auth}", auth.encode())


def free_request(form: str, name: str, token: str) -> bytes:
    """`request` on the free route: no credential, a foreign one, or a Farebox
    token (bearer, cookie) the upstream must not see."""
    auth = {
        "cookie-id": f"Cookie: a=b; farebox_token={token}\r\n",
        "1.0-keep": "Authorization: Basic dTpw\r\n",
        "1.1": f"Authorization: Bearer {token}\r\n",
    }.get(form, "")
    return (FORMS[form].replace(b"/r/", b"/f/").replace(b"{name}", name.encode())).replace(
        b"{auth}", auth.encode()
    )


@pytest.mark.parametrize("route", ["priced", "free"])
@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("name", sorted(ANSWERS))
async def test_an_express_request_is_answered_byte_for_byte_as_the_pipeline_answers(
    lanes: Lanes, raw: Raw, name: str, form: str, route: str
) -> None:
    """A priced route's request admitted by its token, a free route's with or
    without credentials: the same answer, and the same upstream request."""
    token = lanes.token()
    make = request if route == "priced" else free_request
    # Twice on one connection (kept heads, kept upstream heads), then once
    # more asking to close (so the answers end with the connection).
    data = make(form, name, token)
    if form in ("1.1", "head", "cookie-id", "1.0-keep") and name != "untilclose":
        data += data + make("1.1-close", name, token)
    fast = await exchange(lanes.express, data)
    heads_fast = raw.heads[:]
    raw.heads.clear()
    slow = await exchange(lanes.slow, data)
    assert fast.startswith(b"HTTP/1."), fast[:200]
    assert masked(fast) == masked(slow)
    assert lanes.taken and all(lanes.taken), lanes.taken
    # The upstream was asked the same, header for header (the request id aside).
    assert [masked(h) for h in heads_fast] == [masked(h) for h in raw.heads]
    for head in heads_fast:
        assert token.encode() not in head  # Farebox's own token stays here
        # A grant statement for what was paid; nothing granted on a free route.
        assert (b"x-farebox-grant" in head.lower()) == (route == "priced")


@pytest.mark.parametrize(
    ("why", "extra"),
    [
        ("a free quota", b""),
        ("an Origin", b"Origin: https://elsewhere.example\r\n"),
        ("a payment header", b"X-Bsv-Payment: {}\r\n"),
        ("an unknown header", b"X-Custom: 1\r\n"),
    ],
)
async def test_a_free_request_that_needs_more_goes_the_long_way(
    lanes: Lanes, raw: Raw, why: str, extra: bytes
) -> None:
    data = free_request("1.1-close", "plain", "t").replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n")
    if why == "a free quota":
        data = data.replace(b"/f/", b"/q/")
    fast = await exchange(lanes.express, data)
    slow = await exchange(lanes.slow, data)
    assert fast.startswith(b"HTTP/1.1 200 "), fast[:300]
    assert lanes.taken == []
    if why == "a free quota":  # counted: each answer says how many are left
        assert b"RateLimit-Remaining: 999" in fast and b"RateLimit-Remaining: 998" in slow
    else:
        assert masked(fast) == masked(slow)


async def test_free_express_answers_are_counted_as_the_pipeline_counts_them(
    lanes: Lanes, raw: Raw
) -> None:
    requests = metrics.REQUESTS.labels("raw", "/f/{name}", "200")
    metrics.flush()
    before = requests._value.get()
    data = free_request("1.1", "plain", lanes.token())
    await exchange(lanes.express, data * 2)
    await exchange(lanes.slow, data * 2)
    metrics.flush()
    assert requests._value.get() - before == 4
    assert lanes.taken == [True, True]
    tally = lanes.gateway.services.tally
    assert tally is not None
    await tally.flush()
    days = await lanes.store.stats(since_day=today(), until_day=today(), service="raw")
    assert [(d.route, d.counters["requests"]) for d in days] == [("/f/{name}", 4)]


async def test_the_upstream_hears_each_client_address_though_the_head_is_the_same(
    lanes: Lanes, raw: Raw
) -> None:
    data = request("1.1-close", "plain", lanes.token())
    for local in ("127.0.0.1", "127.0.0.2", "127.0.0.1"):
        assert (await exchange(lanes.express, data, local)).startswith(b"HTTP/1.1 200 ")
    forwarded = [re.search(rb"X-Forwarded-For: ([^\r]*)", h).group(1) for h in raw.heads]  # type: ignore[union-attr]
    assert forwarded == [b"127.0.0.1", b"127.0.0.2", b"127.0.0.1"]
    assert all(lanes.taken)


async def test_each_request_carries_its_own_id_upstream_and_back(lanes: Lanes, raw: Raw) -> None:
    data = request("1.1", "plain", lanes.token())
    got = await exchange(lanes.express, data * 3)
    ids = re.findall(rb"X-Request-Id: ([^\r]*)", got)
    upstream_ids = [re.search(rb"X-Request-Id: ([^\r]*)", h).group(1) for h in raw.heads]  # type: ignore[union-attr]
    assert len(set(ids)) == 3 and ids == upstream_ids


@pytest.mark.parametrize(
    ("why", "expected"),
    [
        ("another route's grant", b"402"),
        ("a HEAD grant on a GET", b"402"),
        ("revoked", b"402"),
        ("not ours", b"402"),
        ("an Origin", b"200"),
        ("a payment header too", b"200"),
    ],
)
async def test_what_the_grant_does_not_settle_goes_the_long_way(
    lanes: Lanes, raw: Raw, why: str, expected: bytes
) -> None:
    token = lanes.token()
    extra = b""
    if why == "another route's grant":
        token = lanes.token("/other/{name}")
    elif why == "a HEAD grant on a GET":
        token = lanes.token(methods=("HEAD",))
    elif why == "revoked":
        grant = lanes.tokens.verify(token)
        assert grant is not None
        await lanes.store.revoke(grant[0].id, int(time.time()) + 600)
    elif why == "not ours":
        token = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    elif why == "an Origin":
        extra = b"Origin: https://elsewhere.example\r\n"
    else:
        extra = b"X-Bsv-Payment: {}\r\n"
    data = request("1.1-close", "plain", token).replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n")
    fast = await exchange(lanes.express, data)
    slow = await exchange(lanes.slow, data)
    assert fast.split(b" ", 2)[1] == expected, fast[:300]
    assert masked(fast) == masked(slow) or expected == b"402"  # a 402 names its own nonce
    assert not any(lanes.taken), "decided the long way, not in express"
    if expected == b"402":
        assert raw.heads == [], "nothing reached the upstream"


async def test_a_policy_reload_sends_the_same_head_to_the_new_upstream(
    lanes: Lanes, raw: Raw
) -> None:
    data = request("1.1-close", "plain", lanes.token())
    assert (await exchange(lanes.express, data)).startswith(b"HTTP/1.1 200 ")
    other = Raw("")
    server = await asyncio.start_server(lambda r, w: serve_raw(other, r, w), "127.0.0.1", 0)
    other.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        (lanes.folder / "p.yaml").write_text(textwrap.dedent(POLICY.format(upstream=other.url)))
        assert lanes.gateway.services.policy.reload()
        assert (await exchange(lanes.express, data)).startswith(b"HTTP/1.1 200 ")
    finally:
        server.close()
    assert len(raw.heads) == 1 and len(other.heads) == 1
    assert other.url.removeprefix("http://").encode() in other.heads[0]


async def test_an_unreachable_upstream_is_the_same_problem(lanes: Lanes, raw: Raw) -> None:
    (lanes.folder / "p.yaml").write_text(
        textwrap.dedent(POLICY.format(upstream="http://127.0.0.1:9"))
    )
    assert lanes.gateway.services.policy.reload()
    for accept in (b"", b"Accept: text/html\r\n"):
        data = request("1.1-close", "plain", lanes.token()).replace(
            b"\r\n\r\n", b"\r\n" + accept + b"\r\n"
        )
        fast = await exchange(lanes.express, data)
        slow = await exchange(lanes.slow, data)
        assert fast.startswith(b"HTTP/1.1 502 "), fast[:300]
        assert b"X-Request-Id: " in fast
        assert masked(fast) == masked(slow)
    assert lanes.taken == [True, True]


async def test_express_answers_are_counted_as_the_pipeline_counts_them(
    lanes: Lanes, raw: Raw
) -> None:
    requests = metrics.REQUESTS.labels("raw", "/r/{name}", "200")
    metrics.flush()
    before = requests._value.get()
    data = request("1.1", "plain", lanes.token())
    await exchange(lanes.express, data * 2)
    await exchange(lanes.slow, data * 2)
    metrics.flush()  # counted in the worker, handed to prometheus-client once a second
    assert requests._value.get() - before == 4
    assert lanes.taken == [True, True]
    tally = lanes.gateway.services.tally
    assert tally is not None
    await tally.flush()
    [day] = await lanes.store.stats(since_day=today(), until_day=today(), service="raw")
    assert (day.route, day.counters["requests"], day.counters.get("challenges", 0)) == (
        "/r/{name}",
        4,
        0,
    )


async def test_a_grant_revoked_while_in_use_is_refused_within_the_bound(
    lanes: Lanes, raw: Raw
) -> None:
    token = lanes.token()
    data = request("1.1-close", "plain", token)
    assert (await exchange(lanes.express, data)).startswith(b"HTTP/1.1 200 ")
    verified = lanes.tokens.verify(token)
    assert verified is not None
    await lanes.store.revoke(verified[0].id, int(time.time()) + 600)
    await asyncio.sleep(0.01)  # the fixture's revocation cache lasts 1 ms
    refused = await exchange(lanes.express, data)
    assert refused.startswith(b"HTTP/1.1 402 "), refused[:300]
    assert b"grant-revoked" in refused
    assert len(raw.heads) == 1
    assert lanes.taken == [True, False]


@pytest.mark.parametrize("form", ["1.1", "1.0", "head", "cookie-id", "half-closed"])
@pytest.mark.parametrize(
    "name", ["plain", "chunked", "empty", "units", "missing", "broken", "notmodified", "big"]
)
@pytest.mark.parametrize("route", ["m", "u"])
async def test_a_metered_request_is_answered_and_charged_as_the_pipeline_does(
    lanes: Lanes, raw: Raw, route: str, name: str, form: str
) -> None:
    half_close = form == "half-closed"
    form = "1.1" if half_close else form
    charged = {}
    answers = {}
    for port in (lanes.express, lanes.slow):
        tab = uuid.uuid4().hex
        await lanes.store.credit(tab, 10_000_000, once=tab)
        data = request(form, name, lanes.tab_token(tab)).replace(b"/r/", f"/{route}/".encode())
        if form != "1.0":  # twice on one connection, then once more asking to close
            closing = request("1.1-close", name, lanes.tab_token(tab))
            data += data + closing.replace(b"/r/", f"/{route}/".encode())
        got = await exchange(port, data, half_close=half_close)
        answers[port] = got.replace(tab.encode(), b"TAB")
        await asyncio.sleep(0.05)
        charged[port] = 10_000_000 - (await lanes.store.balance(tab) or 0)
    fast, slow = answers[lanes.express], answers[lanes.slow]
    assert fast.startswith(b"HTTP/1."), fast[:300]
    assert masked(fast) == masked(slow)
    assert charged[lanes.express] == charged[lanes.slow]
    if (name == "units" or (name == "plain" and route == "m")) and form != "head":
        assert charged[lanes.express] > 0
    assert lanes.taken and all(lanes.taken), lanes.taken


async def test_a_tab_too_short_is_refused_as_the_pipeline_refuses_it(lanes: Lanes) -> None:
    refusals = []
    for port in (lanes.express, lanes.slow):
        tab = uuid.uuid4().hex
        await lanes.store.credit(tab, 5_000, once=tab)  # 5 sat: one call at 10 is too dear
        data = request("1.1-close", "plain", lanes.tab_token(tab)).replace(b"/r/", b"/m/")
        refusals.append((await exchange(port, data)).replace(tab.encode(), b"TAB"))
        assert await lanes.store.balance(tab) == 5_000
    assert refusals[0].startswith(b"HTTP/1.1 402 "), refusals[0][:300]
    assert b"tab-exhausted" in refusals[0] and b"tab-exhausted" in refusals[1]
    assert lanes.taken == [True]


async def test_per_mb_meters_go_the_long_way(lanes: Lanes) -> None:
    tab = uuid.uuid4().hex
    await lanes.store.credit(tab, 10_000_000, once=tab)
    data = request("1.1-close", "big", lanes.tab_token(tab)).replace(b"/r/", b"/b/")
    got = await exchange(lanes.express, data)
    assert got.startswith(b"HTTP/1.1 200 ")
    assert lanes.taken == []


async def test_a_token_not_seen_before_is_checked_once_the_long_way(
    lanes: Lanes, raw: Raw, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its signature is checked once (by the pipeline, which keeps it); the
    requests after it take the express path. Junk is checked once a request."""
    decoded: list[str] = []
    real = lanes.tokens._decode

    def counting(token: str):  # type: ignore[no-untyped-def]
        decoded.append(token)
        return real(token)

    monkeypatch.setattr(lanes.tokens, "_decode", counting)
    fresh = lanes.tokens.mint(
        Grant(
            id=uuid.uuid4().hex,
            service="raw",
            scope="/r/{name}",
            covers="route",
            methods=("GET",),
            expires=int(time.time()) + 600,
            txid="00" * 32,
            satoshis=100,
            payer="ab" * 16,
        )
    )
    data = request("1.1", "plain", fresh)
    got = await exchange(lanes.express, data * 2 + request("1.1-close", "plain", fresh))
    assert got.count(b"HTTP/1.1 200 ") == 3
    assert decoded == [fresh]
    assert lanes.taken == [False, True, True]
    junk = fresh[:-6] + "AAAAAA"
    got = await exchange(lanes.express, request("1.1-close", "plain", junk))
    assert got.startswith(b"HTTP/1.1 402 ")
    assert decoded == [fresh, junk]


async def test_access_logged_answers_still_take_the_express_path(
    lanes: Lanes, raw: Raw, caplog: pytest.LogCaptureFixture
) -> None:
    """With --access-log each express answer has its line (status, request id,
    service and route), as the pipeline's have, and the answers stay the same."""
    tab = uuid.uuid4().hex
    await lanes.store.credit(tab, 10_000_000, once=tab)
    sent = [
        request("1.1-close", "plain", lanes.token()),
        free_request("1.1-close", "missing", ""),
        request("1.1-close", "units", lanes.tab_token(tab)).replace(b"/r/", b"/u/"),
    ]
    async with listening(lanes.gateway, access_log=True) as logged:
        with caplog.at_level(logging.INFO, logger="farebox.access"):
            answers = [await exchange(logged.port, data) for data in sent]
            quiet = [await exchange(lanes.express, data) for data in sent[:2]]
    assert lanes.taken == [True] * 5
    assert [masked(a) for a in answers[:2]] == [masked(q) for q in quiet]
    records = [r for r in caplog.records if r.name == "farebox.access"]
    assert [(r.method, r.path, r.status, r.service, r.route) for r in records] == [  # type: ignore[attr-defined]
        ("GET", "/r/plain", 200, "raw", "/r/{name}"),
        ("GET", "/f/missing", 404, "raw", "/f/{name}"),
        ("GET", "/u/units", 200, "raw", "/u/{name}"),
    ]
    for record, answer in zip(records, answers, strict=True):
        sent_id = re.search(rb"X-Request-Id: ([^\r]*)", answer).group(1).decode()  # type: ignore[union-attr]
        assert record.request_id == sent_id  # type: ignore[attr-defined]

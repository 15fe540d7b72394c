"""The lane (gateway/edge/lane.py): the same answers as aiohttp's server, byte for byte
where it matters, and every request it does not take handed over intact.

Each test runs one gateway behind two listeners, with and without the lane,
and sends both the very same bytes: statuses, headers (but Date and
X-Request-Id) and bodies must agree. Then what only the lane does: pipelined
requests, hand-overs in the middle of a connection, framing tricks that must
never split one message into two, idle and half-open connections.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from gateway.edge import logs
from gateway.edge.lane import Lane
from gateway.edge.protocol import ProblemServer
from gateway.policy.reload import PolicyHolder
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import assemble_gateway
from gateway.services import Services
from gateway.store.memory import MemoryStore
from tests.conftest import SERVER_KEY, Upstream

POLICY = """\
services:
  svc:
    upstream: {upstream}
    tabs: {{top_up: 1000, lasts: 1d}}
    routes:
      - path: /paid
        price: 100
        grant: {{lasts: 10m, covers: resource}}
      - path: /metered
        price: 1
        meter: {{per: request}}
      - path: /quota
        price: 5
        free_quota: {{requests: 2, per: 1h}}
      - path: /**
        methods: "*"
        price: free
"""


@dataclass
class Pair:
    lane: int  # port of the listener whose connections start on the lane
    plain: int  # port of the listener without it
    servers: list[ProblemServer]


@pytest.fixture
async def pair(tmp_path: Path, upstream: Upstream) -> AsyncIterator[Pair]:
    path = tmp_path / "policies"
    path.mkdir()
    (path / "p.yaml").write_text(textwrap.dedent(POLICY.format(upstream=upstream.url)))
    proxy = Proxy(connect_timeout=2, read_timeout=5)
    await proxy.start()
    services = Services(PolicyHolder.load(path), SERVER_KEY, store=MemoryStore())
    gateway = assemble_gateway(services, proxy)
    runners = []
    servers = []
    ports = []
    for lane in (gateway.takes, None):
        server = ProblemServer(
            gateway.handle,
            lane=lane,
            access_log=logging.getLogger("farebox.access"),
            access_log_class=logs.AccessLog,
            keepalive_timeout=2.0,
        )
        runner = web.ServerRunner(server)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        servers.append(server)
        ports.append(runner.addresses[0][1])
    yield Pair(ports[0], ports[1], servers)
    for runner in runners:
        await runner.cleanup()
    await proxy.close()


async def exchange(port: int, data: bytes, *, until_close: bool = True, wait: float = 5) -> bytes:
    """Send `data` as it is; what came back until the server closed (or `wait` passed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if not until_close:
            await asyncio.sleep(wait)
            try:
                return await asyncio.wait_for(reader.read(1 << 20), 1)
            except TimeoutError:
                return b""  # nothing answered (yet)
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


def split(data: bytes) -> list[tuple[bytes, dict[str, list[str]], bytes]]:
    """Answers on one connection: (status line, headers, body), bodies by
    Content-Length or chunked framing."""
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        if "content-length" in headers:
            size = int(headers["content-length"][0])
            body, data = rest[:size], rest[size:]
        elif headers.get("transfer-encoding") == ["chunked"]:
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                body, rest = body + rest[:size], rest[size + 2 :]
                if size == 0:
                    break
            data = rest
        else:
            body, data = rest, b""
        answers.append((lines[0].encode(), headers, body))
    return answers


# Differ from one answer to the next whatever serves it (the quota counts on).
VARYING = ("date", "x-request-id", "ratelimit-remaining", "ratelimit")


def comparable(answers: list[tuple[bytes, dict[str, list[str]], bytes]]) -> list[object]:
    return [
        (status, {k: v for k, v in h.items() if k not in VARYING}, body)
        for status, h, body in answers
    ]


REQUESTS = [
    b"GET /free/item?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"HEAD /free/item HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /paid HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /paid HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
    b"HEAD /paid HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /paid HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer not.a.token\r\nConnection: close\r\n\r\n",
    b"GET /quota HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /free/../paid HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /free/%00 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /ranged HTTP/1.1\r\nHost: a\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\n",
    b"GET /big/300000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"HEAD /big/300000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /free/x HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET /free/x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"GET /big/300000 HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET /free/x?forge=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /free/x HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\nConnection: close\r\n\r\n",
    b"GET /.well-known/farebox/nothing HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /free/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET /free/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    b"GET /free/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    b"GET /free/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    b"GET /broken HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", REQUESTS, ids=lambda r: r.split(b"\r\n")[0].decode())
async def test_lane_answers_as_aiohttp_does(pair: Pair, request_bytes: bytes) -> None:
    with_lane = await exchange(pair.lane, request_bytes)
    without = await exchange(pair.plain, request_bytes)
    if b"/broken" in request_bytes:
        # Both cut the connection after the head and the bytes that came.
        assert with_lane.split(b"\r\n")[0] == without.split(b"\r\n")[0]
        assert with_lane.endswith(b"0123456789") and without.endswith(b"0123456789")
        return
    assert comparable(split(with_lane)) == comparable(split(without))


async def test_pipelined_requests_are_answered_in_order_across_a_hand_over(
    pair: Pair, upstream: Upstream
) -> None:
    # Two the lane takes, one with a body (aiohttp's), then one more: the
    # connection stays with aiohttp from the third on, every byte intact.
    data = (
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /three HTTP/1.1\r\nHost: a\r\nContent-Length: 23\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\n"
        b"GET /four HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    answers = split(await exchange(pair.lane, data))
    assert [a[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 4
    assert upstream.paths == ["/one", "/two", "/three", "/four"]
    assert upstream.seen[2].body_len == 23  # the body stayed a body


@pytest.mark.parametrize(
    "data",
    [
        # A body the lane would not see as one: aiohttp reads it as the body.
        b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 34\r\n\r\n"
        b"GET /paid HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"22\r\nGET /paid HTTP/1.1\r\nHost: a\r\n\r\n\r\n0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\ncontent-length : 34\r\n\r\n"
        b"GET /paid HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nX: y\r\n Content-Length: 34\r\n\r\n"
        b"GET /paid HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a HTTP/1.1\nHost: a\nContent-Length: 34\n\nGET /paid HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
async def test_framing_tricks_never_make_a_second_request(
    pair: Pair, upstream: Upstream, data: bytes
) -> None:
    with_lane = split(await exchange(pair.lane, data, until_close=False, wait=0.5))
    without = split(await exchange(pair.plain, data, until_close=False, wait=0.5))
    assert [a[0] for a in with_lane] == [a[0] for a in without]
    assert all(b"402" not in a[0] for a in with_lane)  # /paid never parsed as a request
    assert "/paid" not in upstream.paths


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(pair: Pair) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lane)
    writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    # keepalive_timeout is 2 s here: the server closes, the client sees EOF.
    rest = await asyncio.wait_for(reader.read(), 6)
    assert rest  # the body, then EOF
    writer.close()


async def test_the_keepalive_timeout_counts_from_the_last_answer(pair: Pair) -> None:
    """A connection in use is not closed on the first answer's clock: the
    idle time runs from the end of the latest answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lane)
    loop = asyncio.get_running_loop()
    for _ in range(3):  # 3 requests 0.9 s apart: 2.7 s, past one 2 s timeout
        writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        last = loop.time()
        await asyncio.sleep(0.9)
    assert await asyncio.wait_for(reader.read(), 6) == b""  # then idle: closed
    assert loop.time() - last >= 1.9  # about 2 s after the last answer, not before
    writer.close()


async def test_a_head_that_never_ends_is_closed(pair: Pair) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lane)
    writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    assert await asyncio.wait_for(reader.read(), 6) == b""
    writer.close()


async def test_oversized_heads_get_aiohttp_s_431(pair: Pair) -> None:
    data = b"GET /a HTTP/1.1\r\nHost: a\r\n" + b"X-Big: " + b"x" * 9000 + b"\r\n\r\n"
    with_lane = split(await exchange(pair.lane, data))
    without = split(await exchange(pair.plain, data))
    assert with_lane[0][0] == without[0][0]
    assert with_lane[0][0].split()[1] in (b"400", b"431")


async def test_a_client_that_leaves_mid_stream_frees_the_upstream_connection(
    pair: Pair, upstream: Upstream
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lane)
    writer.write(b"GET /big/50000000 HTTP/1.1\r\nHost: a\r\n\r\n")
    await reader.readexactly(100_000)
    writer.close()
    await asyncio.sleep(0.3)
    # The gateway still answers, on the lane, on a new connection.
    answers = split(await exchange(pair.lane, REQUESTS[0]))
    assert answers[0][0] == b"HTTP/1.1 200 OK"


async def test_the_access_log_has_a_line_per_lane_answer(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="farebox.access"):
        await exchange(
            pair.lane, b"GET /free/item?secret=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "farebox.access"]
    assert len(lines) == 1 and lines[0].startswith("GET /free/item 200")
    assert "secret" not in lines[0]


async def test_shutdown_closes_idle_lane_connections(pair: Pair) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lane)
    writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    lane = pair.servers[0].lane
    assert lane is not None and any(isinstance(c, Lane) for c in lane.connections)
    await pair.servers[0].shutdown(1.0)
    await asyncio.wait_for(reader.read(), 3)  # EOF, not a hang
    writer.close()
